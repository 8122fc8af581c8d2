"""`EncoderRecord`: one row of the ``models`` table (schemas/models.json), typed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class EncoderRecord:
    """An encoder that wrote embeddings into a store; ``as_dict()`` is its ``models`` row."""

    model_id: str  # hash of the weights (classic: statistics) and the feature definition
    arch: str  # timm architecture name, or classic
    img_size: int
    embedding_dim: int
    config: str  # the feature definition as JSON (`settings` parses it)
    weights_source: str
    weights_format: str
    random_init: bool
    table: str  # the embeddings table holding its vectors
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EncoderRecord:
        """The record of a ``models`` row (columns this code does not know are ignored)."""
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def settings(self) -> dict[str, Any]:
        """``config`` parsed (EncoderConfig's or ClassicConfig's fields)."""
        return json.loads(self.config)

    @property
    def fitted_to_split(self) -> bool:
        """Whether the encoder was fitted on one split's training side only (an inductive
        ``ablation`` adds such encoders; they are never a store's default)."""
        return self.settings.get("fit_sequences") is not None
