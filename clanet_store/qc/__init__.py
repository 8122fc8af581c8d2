"""Quality control of new exports (SPEC 8, issue 10): are the new images like the reference?

`drift` holds the MMD^2 two-sample test with image or sequence permutations and its online mode,
`anomaly` the isolation forest and group scores, `corrupt` the defocus / contrast / brightness
corruptions, `heatmap` the plate-layout PNG. All of it works on
arrays in memory; ``pipelines.qc`` reads the embeddings and writes the ``qc`` table.
"""

__all__ = [
    "anomaly",
    "corrupt",
    "drift",
    "heatmap",
    "quality",
]
