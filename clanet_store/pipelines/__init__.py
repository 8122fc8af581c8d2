"""Orchestration: Dask ingest, batched encode, training loops reading from stores."""
