"""Multiple-instance learning over sequences of patch embeddings (SPEC 6-7, issue 8).

A sequence (all images of one flask position over time) is a bag of T x K patch embeddings
(`bags.Bag`). `aggregators` holds the bag classifiers (gated attention and the paper's baselines),
`tss` the Time-series Segment Sampling of training, `training` the batched Eq. 14 training loop,
`inference` the class probabilities, `model_file` the model files, `splits` the batch-separated /
batch-stratified splits, `metrics` the scores. All of it
works on arrays in memory; reading bags from the store is the stores' job.
"""

__all__ = [
    "aggregators",
    "authentication",
    "bags",
    "encoder_metrics",
    "inference",
    "metrics",
    "model_file",
    "splits",
    "training",
    "tss",
]
