"""Orchestration: each module moves data between the stores and the core for one command
(Dask ingest, batched encode, SSL and MIL training loops reading from stores, QC, evaluation)."""

__all__ = [
    "authenticate",
    "choose_encoder",
    "corrupt",
    "encode",
    "encode_workers",
    "evaluate_encoder",
    "export_profiles",
    "inductive",
    "ingest",
    "mil",
    "prefetch",
    "qc",
    "search",
    "split_encoder",
    "ssl_train",
]
