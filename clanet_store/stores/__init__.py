"""On-disk layouts: manifests, the Zarr patch array, LanceDB tables, schema versions, locks;
where a store lives (a folder or object storage)."""

__all__ = [
    "embedding_store",
    "filters",
    "lance",
    "location",
    "lock",
    "manifest",
    "patch_store",
    "repair",
    "sequence_embeddings",
    "sequences",
    "summary",
]
