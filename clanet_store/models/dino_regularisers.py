"""Two guards against DINO collapse at small scale, from DINOv2 (Oquab et al., TMLR 2024).

* `sinkhorn_knopp`: the teacher's targets by Sinkhorn-Knopp instead of centring and a softmax
  (SwAV, Caron et al. 2020; DINOv2's ``SinkhornKnoppTeacher``): the batch's soft assignments are
  normalised in turn per output and per patch, so every output gets about the same share of the
  batch (equipartition) and the teacher can send neither every patch to one output nor, once its
  logits differ at all, every patch to a flat distribution.
* `koleo_loss`: the Kozachenko-Leonenko differential-entropy estimator (Sablayrolles et al.,
  "Spreading vectors for similarity search", ICLR 2019; DINOv2's ``KoLeoLoss``) on the student's
  L2-normalised class tokens: minus the mean log distance of each feature to its nearest
  neighbour in the batch, low when the features are spread over the sphere.

Pure torch functions of tensors; `clanet_store.models.dino` uses them as options of a recipe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3) -> Tensor:
    """[B, K] teacher logits -> [B, K] targets: rows sum to 1, columns to about B / K.

    ``Q = exp(logits / temperature)`` normalised to total mass 1, then ``iterations`` times:
    each output (column) scaled to mass 1 / K, each patch (row) to mass 1 / B; finally times B,
    so each row is a distribution (exact) and each column holds B / K (to the precision of the
    last iteration). DINOv2 uses 3 iterations. Computed in the log domain (the same values as
    DINOv2's, without its under- or overflow when logits / temperature spans hundreds).
    """
    log_q = logits.float() / temperature
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    batch, outputs = log_q.shape
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(outputs)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(batch)
    return torch.exp(log_q) * batch


def koleo_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """[B, D] features -> the KoLeo regulariser: ``-mean_i log ||x_i - x_nn(i)||`` of the
    L2-normalised rows, nn(i) the nearest other row (by cosine); lower when rows are spread."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.T
        dots.fill_diagonal_(-2.0)  # never one's own neighbour (cosines are >= -1)
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()
