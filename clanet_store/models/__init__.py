"""Torch models of the method: the ViT patch encoder (SPEC 4) and, later, DINO training (SPEC 5)."""
