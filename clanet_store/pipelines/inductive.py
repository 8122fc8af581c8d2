"""Inductive or transductive: did the encoder see the test images? (SPEC 7, issue 19)

Self-supervised training uses no labels, but an encoder trained on every stored patch has seen
the test batches of a batch-separated split: its scores are transductive. ``ssl-train --split``
trains on the patches of the split's training sequences only (`split_patch_rows`), and the
checkpoint records that split; `encoder_training` then says, for a MIL split, which of the two an
encoder is:

- ``inductive``: a random init, weights from elsewhere (not a clanet-ssl checkpoint), or an
  ssl-train checkpoint whose split trained on none of the MIL split's test sequences;
- ``transductive``: an ssl-train checkpoint trained on all patches (no split), or on a split
  whose training side holds test sequences of the MIL split; the classic descriptor whose
  feature standardisation was fitted, label-free, on a sample of all stored patches (fitted on a
  split's training side, it is judged like an ssl-train checkpoint, from its models row);
- ``unknown``: a clanet-ssl checkpoint that was not given (the store records its file name
  only) or cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lancedb.expr import col

from clanet_store.learn.splits import Split
from clanet_store.models.checkpoint import SSL_FORMAT
from clanet_store.models.classic import CLASSIC_ARCH
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.patch_store import PatchStore
from clanet_store.stores.sequences import SEQUENCE_KEYS, SequenceRecord, sequence_filter
from clanet_store.torchfile import load_torch_file

ENCODER_TRAINING = ("inductive", "transductive", "unknown")


def split_patch_rows(store: PatchStore, split: Split, k: int) -> np.ndarray:
    """Sorted Zarr rows of the patches (rank < k) of the split's training sequences."""
    where = (col("rank") < k) & sequence_filter(split.train)
    return np.sort(store.query("patches").where(where).select("row").to_numpy("row"))


def patch_sequences(store: PatchStore) -> list[SequenceRecord]:
    """The store's sequences from its patches table (no embeddings needed), as `list_sequences`
    gives them: the same keys, batches, positions and label order, so a split drawn from them
    before encoding is the split `train` draws (and reuses) afterwards."""
    frame = store.query("patches").select(*SEQUENCE_KEYS).to_polars()
    frame = frame.unique("sequence_id").sort("sequence_id")
    classes = {name: i for i, name in enumerate(sorted(frame["cell_line"].unique().to_list()))}
    return [
        SequenceRecord(
            key=row["sequence_id"],
            label=classes[row["cell_line"]],
            batch=f"{row['cell_line']}/{row['batch']}",
            position="/".join(
                str(part)
                for part in (row["well"], row["location"], row["crop"])
                if part is not None
            ),
            n_images=0,
        )
        for row in frame.iter_rows(named=True)
    ]


def checkpoint_split(path: str | Path) -> tuple[bool, Split | None]:
    """(found, split) of an ssl-train checkpoint: the split it trained on, None for all patches."""
    try:
        ckpt = load_torch_file(path, "an ssl-train checkpoint")
        record = ckpt.get("split")
        return True, None if record is None else Split.from_dict(record)
    except Exception:  # not a torch file (TorchFileError), a foreign dict, a bad split record
        return False, None


def encoder_training(
    model: EncoderRecord, split: Split | None, checkpoint: str | Path | None = None
) -> dict[str, Any]:
    """Whether the encoder ``model`` saw the test side of ``split``.

    ``checkpoint``: the ssl-train checkpoint the encoder was read from (the store records its
    file name only; without it, that name is looked up in the working directory). Returns
    ``{"encoder_training": inductive | transductive | unknown, "encoder_training_why": ...}``.
    """
    if model.arch == CLASSIC_ARCH:
        return _classic_training(model.settings, split)
    if model.random_init or model.weights_format != SSL_FORMAT:
        origin = "a random init" if model.random_init else "weights from elsewhere"
        return _said("inductive", f"{origin}: not trained on this store's patches")
    name = model.weights_source
    path = Path(checkpoint) if checkpoint is not None else Path(name)
    found, ssl_split = checkpoint_split(path) if path.name == name else (False, None)
    if not found:
        return _said("unknown", f"ssl-train checkpoint {name} not given or unreadable: cannot tell")
    if ssl_split is None:
        return _said("transductive", "DINO trained on every stored patch, test sequences too")
    if split is None:
        return _said("inductive", f"DINO trained on the training side of {_name(ssl_split)}")
    seen = set(ssl_split.train) & set(split.test)
    if seen:
        return _said(
            "transductive",
            f"DINO trained on {len(seen)} test sequences of {_name(split)} ({_name(ssl_split)})",
        )
    return _said("inductive", f"DINO trained on the training side of {_name(ssl_split)} only")


def _classic_training(config: dict[str, Any], split: Split | None) -> dict[str, Any]:
    """The classic descriptor is training-free, but its feature standardisation (one mean and
    standard deviation per feature) is fitted without labels on a sample of stored patches: of
    all of them, or of one split's training sequences (`encode.classic_encoder` with a split)."""
    fitted = config.get("fit_sequences")
    if fitted is None:
        return _said(
            "transductive",
            "training-free descriptor, but its feature standardisation was fitted without "
            "labels on a sample of all stored patches",
        )
    where = f"the training side of {config['fit_split']}"
    seen = set(fitted) & set(split.test) if split is not None else set()
    if seen:
        return _said(
            "transductive",
            f"classic statistics fitted on {where}, which holds {len(seen)} test sequences "
            f"of {_name(split)}",
        )
    return _said("inductive", f"classic statistics fitted on {where} only")


def _name(split: Split) -> str:
    return f"{split.kind} repeat {split.repeat}"


def _said(kind: str, why: str) -> dict[str, Any]:
    return {"encoder_training": kind, "encoder_training_why": why}
