"""On-disk layouts: manifests, the Zarr patch array, LanceDB tables, schema versions, locks."""
