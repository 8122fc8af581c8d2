"""Which encoder the MIL models of a run are trained on: the most informative healthy one.

The demo encodes with its short DINO run and with the training-free ``classic`` descriptor
(issue 18); the paper's ablation says the encoder matters most, so the models should be trained
on the one that carries signal. The choice must not look at the test side: each candidate is
judged on the **training side of the split only** (its sequences' embeddings, their cell lines;
other wells stand in for other batches where the training side has one batch per line, as in a
batch-separated split), at the image level of ``evaluate-encoder``:

1. encoders that are random inits or collapsed (``models.health``) are set aside while any other
   remains: their numbers are not evidence of anything;
2. among the rest, the highest lift of cross-batch mAP over its chance wins (mAP ranks every
   candidate of the other groups, so it is steadier than a 20-neighbour vote on small sets);
   ties go to the earlier candidate (the SSL encoder first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clanet_store.learn.encoder_metrics import LevelEvaluation
from clanet_store.learn.splits import Split
from clanet_store.pipelines.evaluate_encoder import Encoder, evaluate_model
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.sequences import sequence_filter

LEVEL = "image"


@dataclass(frozen=True)
class Candidate:
    """One encoder judged on a split's training side (image level)."""

    encoder: Encoder
    evaluation: LevelEvaluation | None  # None: fewer than two images on the training side

    @property
    def usable(self) -> bool:
        """Neither a random init nor collapsed."""
        collapsed = self.evaluation is None or self.evaluation.health.collapsed
        return not (self.encoder.random_init or collapsed)

    @property
    def lift(self) -> float:
        """Cross-batch mAP minus its chance; -inf where undefined."""
        m = self.evaluation.metrics if self.evaluation else None
        if m is None or m.map_cross_batch is None or m.map_cross_batch_chance is None:
            return float("-inf")
        return m.map_cross_batch - m.map_cross_batch_chance

    def describe(self) -> str:
        """``arch (model_id): state, mAP x (chance y) across groups``."""
        e, ev = self.encoder, self.evaluation
        name = f"{e.arch} ({e.model_id})"
        if ev is None:
            return f"{name}: fewer than two images on the training side"
        state = "random init" if e.random_init else ""
        if ev.health.collapsed:
            state = ", ".join(filter(None, [state, "COLLAPSED"]))
        state = state or "healthy"
        m = ev.metrics
        numbers = (
            f"mAP {m.map_cross_batch:.3f} (chance {m.map_cross_batch_chance:.3f}) across "
            f"{m.group_by}s"
            if m.map_cross_batch is not None and m.map_cross_batch_chance is not None
            else "no cross-group mAP"
        )
        return (
            f"{name}: {state} (median cosine distance {ev.health.cosine_distance_median:.4f}), "
            f"{numbers}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.encoder.as_dict(),
            "usable": self.usable,
            "image": self.evaluation.as_dict() if self.evaluation else None,
        }


@dataclass(frozen=True)
class EncoderChoice:
    """The encoder chosen for one split, why, and every candidate's numbers."""

    split: str
    model_id: str
    reason: str
    candidates: tuple[Candidate, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "model_id": self.model_id,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def pick(candidates: Sequence[Candidate]) -> tuple[Candidate, str]:
    """The rule of the module doc: the chosen candidate and a one-line reason."""
    usable = [c for c in candidates if c.usable]
    pool = usable or list(candidates)
    best = max(pool, key=lambda c: c.lift)  # max keeps the first of equal lifts
    others = "; ".join(c.describe() for c in candidates if c is not best)
    if not usable:
        why = "no candidate is healthy (all random inits or collapsed): the models carry no signal"
    elif len(usable) == 1 and len(candidates) > 1:
        why = "the only healthy candidate"
    elif len(candidates) == 1:
        why = "the only candidate"
    else:
        why = "the highest cross-group mAP above chance among the healthy candidates"
    reason = f"{best.describe()}: {why}" + (f". Others: {others}" if others else "")
    return best, reason


def choose_encoder(
    store_path: str | Path,
    model_ids: Sequence[str],
    split: Split,
    top_k: int = 10,
    seed: int = 0,
) -> EncoderChoice:
    """Judge ``model_ids`` on the training side of ``split`` and pick one (module doc)."""
    store = EmbeddingStore(store_path)
    train_side = sequence_filter(split.train)
    candidates = []
    for model_id in dict.fromkeys(model_ids):  # in order, once each
        evaluation = evaluate_model(store, model_id, top_k, seed, where=train_side)
        candidates.append(Candidate(evaluation.encoder, evaluation.levels.get(LEVEL)))
    best, reason = pick(candidates)
    return EncoderChoice(
        f"{split.kind} repeat {split.repeat}", best.encoder.model_id, reason, tuple(candidates)
    )
