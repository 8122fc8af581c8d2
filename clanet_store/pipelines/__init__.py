"""Orchestration: each module moves data between the stores and the core for one command
(Dask ingest, batched encode, SSL and MIL training loops reading from stores, QC, evaluation)."""

__all__ = [
    "authenticate",
    "choose_encoder",
    "corrupt",
    "encode",
    "encode_run",
    "encode_workers",
    "evaluate_encoder",
    "export_profiles",
    "exports",
    "inductive",
    "ingest",
    "mil",
    "mil_reports",
    "patches",
    "prefetch",
    "qc",
    "repair",
    "search",
    "split_encoder",
    "split_files",
    "ssl_report",
    "ssl_train",
    "store_info",
]
