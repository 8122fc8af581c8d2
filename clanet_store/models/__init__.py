"""Torch models and descriptors of the method: the ViT patch encoder (SPEC 4), DINO training
(SPEC 5), the training-free ``classic`` descriptor, the Encoder protocol and embedding health."""

__all__ = [
    "checkpoint",
    "classic",
    "device",
    "dino",
    "dino_regularisers",
    "encoder",
    "health",
    "protocol",
]
