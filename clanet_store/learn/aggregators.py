"""Bag classifiers over padded bags of patch embeddings: gated attention and the baselines (SPEC 6).

Every aggregator takes ``x[B, N, D]`` and ``mask[B, N]`` (False = padding or a missing patch) and
returns ``logits[B, C]`` whose softmax is the bag's class probability; ``loss`` gives the per-bag
training loss. Masked instances get zero weight everywhere; their values must be finite (`collate`
writes zeros). Baselines of the paper's Tables 3-4: mean pooling, max pooling and a patch-level
classifier with majority vote.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_DIM = 128
# Below this share of valid slots, instance-wise layers run on the gathered valid instances. On the
# 2-core development CPU, gathering 11.5k x 1536 float32 rows took ~85 ms and their 1536 -> 256
# projection ~185 ms: gathering pays when it saves at least half of the work.
PACK_BELOW = 0.5


def _instance_linear(x: Tensor, mask: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``weight h + bias`` of every valid instance h, feature-major: (F, B, N).

    Feature-major, each output feature (a row range of ``weight``) is one contiguous block, so
    the element-wise layers after it run on contiguous memory (on a (B, N, F) split they are
    strided and several times slower). Masked slots hold finite filler (the projection of the
    finite padding, or 0) that callers weigh 0, so no pass over the output is spent clearing it.
    Mostly padded batches (sequences of very different lengths) are gathered first so that no
    work is spent on padding; others are projected in place, which avoids the copy.
    """
    features = (weight.shape[0], *mask.shape)
    if mask.sum() >= PACK_BELOW * mask.numel():
        flat = x.reshape(-1, x.shape[2])
        return torch.addmm(bias.unsqueeze(1), weight, flat.t()).view(features)
    projected = torch.addmm(bias.unsqueeze(1), weight, x[mask].t())
    return x.new_zeros(features).masked_scatter(mask.expand(features), projected)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid slots of ``values`` (B, N, F): (B, F)."""
    share = mask.to(values.dtype) / mask.sum(dim=1, keepdim=True)
    return torch.bmm(share.unsqueeze(1), values).squeeze(1)


class MILAggregator(nn.Module):
    """Common interface: ``forward(x, mask) -> logits[B, C]`` and ``loss(x, mask, y)``.

    Every aggregator ends in the linear ``classifier`` D -> C (on the bag vector, or on each patch
    for `PatchVote`).
    """

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, n_classes)

    def loss(self, x: Tensor, mask: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-bag training loss (B,) and the logits (B, C) it came from: bag cross-entropy."""
        logits = self(x, mask)
        return F.cross_entropy(logits, y, reduction="none"), logits

    def bag_vector(self, x: Tensor, mask: Tensor) -> Tensor:
        """The pooled bag representation z (B, D) the classifier reads; `PatchVote` has none."""
        raise ValueError(f"{type(self).__name__} pools no bag vector (it votes per patch)")


class GatedAttention(MILAggregator):
    """Gated-attention MIL (Ilse et al. 2018; CLANet Sec. 4.3, SPEC 6).

    ``a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i)))`` over the valid instances of a bag
    (masked ones get exactly 0), ``z = sum_i a_i h_i``, ``logits = classifier(z)``; V, U: D -> 128,
    w: 128 -> 1, classifier: D -> C, all with biases.
    """

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__(dim, n_classes)
        self.V = nn.Linear(dim, ATTENTION_DIM)
        self.U = nn.Linear(dim, ATTENTION_DIM)
        self.w = nn.Linear(ATTENTION_DIM, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.pool(x, mask)[0]

    def attention(self, x: Tensor, mask: Tensor) -> Tensor:
        """The attention weights a[B, N] (0 on masked instances, each row sums to 1)."""
        return self.pool(x, mask)[1]

    def reference_pool(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, C) and attention (B, N), written as the formula: three ``nn.Linear``
        applied to every slot, padding included (Ilse et al.'s reference code). `pool` is the
        same computation, faster; tests hold the two equal."""
        gate = torch.tanh(self.V(x)) * torch.sigmoid(self.U(x))
        scores = self.w(gate).squeeze(2)
        attention = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        z = (attention.unsqueeze(2) * x).sum(dim=1)
        return self.classifier(z), attention

    def pool(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """`reference_pool`, fused: V and U in one matrix product (one pass over the instances
        instead of two), feature-major, and mostly padded batches gathered first
        (`_instance_linear`)."""
        weight = torch.cat([self.V.weight, self.U.weight])
        bias = torch.cat([self.V.bias, self.U.bias])
        hidden_v, hidden_u = _instance_linear(x, mask, weight, bias).split(ATTENTION_DIM)
        gate = (torch.tanh(hidden_v) * torch.sigmoid(hidden_u)).flatten(1)
        scores = torch.addmm(self.w.bias.unsqueeze(1), self.w.weight, gate).view(mask.shape)
        attention = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        z = torch.bmm(attention.unsqueeze(1), x).squeeze(1)
        return self.classifier(z), attention

    def bag_vector(self, x: Tensor, mask: Tensor) -> Tensor:
        """z = sum_i a_i h_i (`pool`'s, before the classifier)."""
        attention = self.attention(x, mask)
        return torch.bmm(attention.unsqueeze(1), x).squeeze(1)


class MeanPooling(MILAggregator):
    """Baseline: the mean of the valid instances, then a linear classifier D -> C."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.classifier(self.bag_vector(x, mask))

    def bag_vector(self, x: Tensor, mask: Tensor) -> Tensor:
        return _masked_mean(x, mask)


class MaxPooling(MILAggregator):
    """Baseline: the element-wise maximum over the valid instances, then a linear classifier."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.classifier(self.bag_vector(x, mask))

    def bag_vector(self, x: Tensor, mask: Tensor) -> Tensor:
        return x.masked_fill(~mask.unsqueeze(2), float("-inf")).amax(dim=1)


class PatchVote(MILAggregator):
    """Baseline: a linear classifier D -> C on every patch; the bag's class by majority vote.

    Training: each valid patch carries its bag's label; the bag loss is the mean patch
    cross-entropy. Inference: the logits are the log of each class's share of the patch votes, so
    their softmax is the vote share and argmax the majority (ties: the lowest class index).
    """

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self._vote_logits(self._patch_logits(x, mask), mask)

    def loss(self, x: Tensor, mask: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        patch_logits = self._patch_logits(x, mask)
        labels = y.unsqueeze(1).expand(mask.shape)
        patch_loss = F.cross_entropy(patch_logits.transpose(0, 1), labels, reduction="none")
        bag_loss = _masked_mean(patch_loss.unsqueeze(2), mask).squeeze(1)
        return bag_loss, self._vote_logits(patch_logits.detach(), mask)

    def _patch_logits(self, x: Tensor, mask: Tensor) -> Tensor:
        """Every slot's class logits, class-major: (C, B, N)."""
        return _instance_linear(x, mask, self.classifier.weight, self.classifier.bias)

    @staticmethod
    def _vote_logits(patch_logits: Tensor, mask: Tensor) -> Tensor:
        votes = F.one_hot(patch_logits.argmax(dim=0), patch_logits.shape[0])
        return torch.log(_masked_mean(votes.to(patch_logits.dtype), mask))


_BY_NAME: dict[str, type[MILAggregator]] = {
    "gated": GatedAttention,
    "mean": MeanPooling,
    "max": MaxPooling,
    "patch-vote": PatchVote,
}
AGGREGATORS = tuple(_BY_NAME)


def build_aggregator(name: str, dim: int, n_classes: int) -> MILAggregator:
    """The aggregator called ``name`` (one of `AGGREGATORS`) for D-dim instances and C classes."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}")
    return _BY_NAME[name](dim, n_classes)
