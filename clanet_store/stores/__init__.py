"""On-disk layouts: manifests, the Zarr patch array, LanceDB tables, schema versions, locks;
where a store lives (a folder or object storage)."""

__all__ = [
    "embedding_store",
    "encoder_record",
    "filters",
    "lance",
    "location",
    "lock",
    "manifest",
    "patch_store",
    "query",
    "sequence_embeddings",
    "sequences",
    "summary",
]
