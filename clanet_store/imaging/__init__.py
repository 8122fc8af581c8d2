"""Imaging core: decode an image, find its overlays, brightfield mask, Cell Cluster-level Selection.

Pure functions over NumPy arrays (only ``decode.read_grey`` touches a file); ``extract`` is the one
call the ingest pipeline makes per image.
"""

__all__ = [
    "canny",
    "ccs",
    "decode",
    "draw",
    "extract",
    "jit",
    "mask",
    "morphology",
    "overlays",
    "params",
    "runlength",
]
