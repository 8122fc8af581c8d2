"""The encoder of one split of an evaluation, fitted on that split's training side (issue 19).

Scores on an encoder whose fitted parts saw a split's test images are transductive. `ablation`
(inductive by default) asks `split_encoder` for the encoder of each split:

- ``classic``: the descriptor is fixed, but its feature statistics are fitted again on a sample
  of the split's training patches (`encode.classic_encoder` with the split) and the store is
  encoded with the result: a model_id of its own, stored like any encoder; encode is resumable
  and keyed by (patch_id, model_id), so a re-run finds it and adds nothing;
- with ``ssl`` (a pipeline's ``[ssl_train]`` table): DINO on the split's training side, as
  ``run`` trains it (`ssl_train.stage_run`), into ``<folder>/ssl/checkpoint-<kind>-r<R>.pt``
  (a finished one is reused), then encoded; a run that collapsed in its first epoch leaves no
  checkpoint and a seeded random init of the arch is used, which says so;
- otherwise (a random init, weights from elsewhere, an ssl-train checkpoint without ``ssl``):
  the given encoder as it is, labelled by `inductive.encoder_training`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clanet_store.learn.splits import Split
from clanet_store.models.classic import CLASSIC_ARCH
from clanet_store.pipelines.encode import classic_encoder, encode, load_encoder
from clanet_store.pipelines.inductive import encoder_training
from clanet_store.pipelines.ssl_train import stage_run
from clanet_store.progress import Progress, as_stage
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.encoder_record import EncoderRecord


@dataclasses.dataclass(frozen=True)
class SplitEncoder:
    """The encoder one split is scored on. refit: ``classic statistics``, ``ssl-train`` or
    ``none`` (the given encoder); collapsed: why its DINO run stopped early, if it did."""

    split: str
    model_id: str
    refit: str
    encoder_training: str
    encoder_training_why: str
    checkpoint: str | None = None
    collapsed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def given_encoder(
    model: EncoderRecord, split: Split, checkpoint: str | Path | None
) -> SplitEncoder:
    """The encoder ``model`` for ``split``, as it is (nothing refitted)."""
    return SplitEncoder(
        _name(split), model.model_id, "none", **encoder_training(model, split, checkpoint)
    )


def split_encoder(
    store_path: str | Path,
    base: EncoderRecord,
    split: Split,
    folder: Path,
    ssl: dict[str, Any] | None = None,
    ssl_checkpoint: str | Path | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = print,
) -> SplitEncoder:
    """The encoder ``split`` is scored on, fitted on its training side where something is
    fitted (see the module doc); ``base`` is the store's encoder."""
    if ssl is not None:
        return _dino(store_path, split, folder, ssl, progress, say)
    if base.arch != CLASSIC_ARCH:
        return given_encoder(base, split, ssl_checkpoint)
    encoder = classic_encoder(store_path, split=split)
    encode(store_path, encoder, progress=as_stage(progress, f"encode classic {_name(split)}"))
    fitted = EmbeddingStore(store_path).encoder(encoder.model_id)
    return SplitEncoder(
        _name(split), encoder.model_id, "classic statistics", **encoder_training(fitted, split)
    )


def _dino(
    store_path: str | Path,
    split: Split,
    folder: Path,
    ssl: dict[str, Any],
    progress: Progress | None,
    say: Callable[[str], None],
) -> SplitEncoder:
    name = _name(split)
    out = folder / "ssl" / f"checkpoint-{split.kind}-r{split.repeat}.pt"
    step = as_stage(progress, f"ssl-train {name}")
    r = stage_run(
        store_path,
        out,
        ssl,
        split,
        None if step is None else lambda event: step(name, event.step, event.total_steps),
        say,
        resume=True,
    )
    weights = out if out.exists() else None
    encoder = load_encoder(weights, ssl["arch"], "auto", seed=ssl["seed"])
    encode(store_path, encoder, progress=as_stage(progress, f"encode {name}"))
    trained = EmbeddingStore(store_path).encoder(encoder.model_id)
    return SplitEncoder(
        name,
        encoder.model_id,
        "ssl-train",
        **encoder_training(trained, split, weights),
        checkpoint=None if weights is None else str(weights),
        collapsed=r.collapsed,
    )


def _name(split: Split) -> str:
    return f"{split.kind} r{split.repeat}"
