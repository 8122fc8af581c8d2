"""On-disk layouts: manifests, the Zarr patch array, LanceDB tables, schema versions, locks."""

__all__ = [
    "embedding_store",
    "filters",
    "lance",
    "lock",
    "manifest",
    "patch_store",
    "repair",
    "sequence_embeddings",
    "sequences",
    "summary",
]
