"""Experiment (issue 18, negative result): is a wavelet scattering descriptor a better
training-free encoder than ``classic`` across wells of real images?

Scattering (Bruna & Mallat, "Invariant scattering convolution networks", IEEE TPAMI 2013) is the
textbook training-free texture representation, so it was tried once, with its design fixed before
the run and nothing tuned afterwards: kymatio's ``Scattering2D(J=4, L=8, max_order=2)`` on each
112 x 112 patch standardised per patch (as classic normalises intensity per patch), the 417
coefficients averaged over space, ``log(S + 1e-6)`` for orders 1 and 2, then each feature
standardised over all stored patches (transductive, like classic's first-encode statistics).
The embeddings are written into the store as an encoder of ``arch = scatter-exp`` through
``pipelines.encode.encode`` and evaluated with ``evaluate_encoders`` next to the store's others.

kymatio is not a dependency of the package (its top-level import needs ``scipy.special.sph_harm``,
gone from scipy 1.17: the 2-D frontend is imported directly). Install it by hand to re-run:

    pip install kymatio
    clanet-store ingest ../shared/data/azgcb_sample --store azgcb_store --workers 1
    clanet-store encode --store azgcb_store --encoder classic
    python benchmarks/experiments/scattering_descriptor.py azgcb_store

Results: docs/science.md ("A scattering descriptor").
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

from clanet_store.pipelines.encode import encode
from clanet_store.pipelines.evaluate_encoder import evaluate_encoders
from clanet_store.stores.embedding_store import EmbeddingStore

SCATTERING = ScatteringTorch2D(J=4, shape=(112, 112), L=8, max_order=2)


def log_scattering(patches: np.ndarray, chunk: int = 32) -> np.ndarray:
    """[N, 112, 112] uint8 -> [N, 417]: spatially averaged scattering, log of orders 1-2."""
    x = torch.as_tensor(patches, dtype=torch.float32)
    x = (x - x.mean(dim=(1, 2), keepdim=True)) / (x.std(dim=(1, 2), keepdim=True) + 1e-6)
    out = []
    for i in range(0, len(x), chunk):
        s = SCATTERING(x[i : i + chunk]).mean(dim=(-1, -2))
        s[:, 1:] = torch.log(s[:, 1:] + 1e-6)
        out.append(s)
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class ScatterConfig:
    arch: str = "scatter-exp"
    img_size: int = 112

    def as_dict(self) -> dict:
        return asdict(self)


class ScatterEncoder:
    """The `Encoder` protocol over `log_scattering`, standardised with frozen statistics."""

    embedding_dim = 417
    config = ScatterConfig()
    weights_source = "scatter-exp(J=4,L=8,order=2)"
    weights_format = "none"
    random_init = False
    device = torch.device("cpu")

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean, self.std = mean, std
        self.model_id = hashlib.sha256(mean.tobytes() + std.tobytes()).hexdigest()[:16]

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        features = (log_scattering(patches.cpu().numpy()) - self.mean) / self.std
        return torch.as_tensor(features, dtype=torch.float32)


def main(store_path: str) -> None:
    torch.set_num_threads(1)
    store = EmbeddingStore(store_path)
    ids = store.query("patches").select("patch_id").to_polars()["patch_id"].to_list()
    features = log_scattering(store.patch_store.pixels(ids))
    encoder = ScatterEncoder(features.mean(0), features.std(0) + 1e-6)
    print(json.dumps(encode(store_path, encoder).as_dict(), default=str))
    for evaluation in evaluate_encoders(store_path):
        print(json.dumps(evaluation.as_dict(), default=str))


if __name__ == "__main__":
    main(sys.argv[1])
