"""Declared pipelines: a TOML file (``pipelines/demo.toml``, ``pipelines/paper.toml``) names the
parameters of every stage, so an experiment is reproducible from one versioned file.

A config has a ``[pipeline]`` table (``name``, ``version`` = `CONFIG_VERSION`, ``description``)
and one table per stage of `STAGES`. A stage table may leave keys out (they take the defaults
below) but may not add unknown ones: a typo is an error naming the file and the key, never a
silently ignored setting. ``dino`` (ssl_train) takes `DinoConfig` fields, changing those of
``recipe`` (``finetune`` or ``scratch``; "": by ``init``), ``mil`` (train) takes `MILConfig`
fields (``tss_prior`` included), ``decode``, ``overlays``, ``mask`` and ``ccs`` (ingest) take
`imaging.params.DecodeParams` / `OverlayParams` / `MaskParams` / `CCSParams` fields; all are
checked when the stage builds them.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clanet_store.errors import ClanetError

CONFIG_VERSION = 1
# Data flows one way: each stage reads what the stages before it wrote.
STAGES = (
    "synth",
    "ingest",
    "ssl_train",
    "encode",
    "choose_encoder",
    "index",
    "train",
    "evaluate",
    "search",
    "report",
)
# Every stage's keys and their defaults; "" means "not set" for paths and names.
DEFAULTS: dict[str, dict[str, Any]] = {
    "synth": {"lines": 4, "batches": 2, "positions": 2, "timepoints": 4, "seed": 0},
    "ingest": {
        "workers": 0,
        "plate_map": "",
        "commit_every": 64,
        "decode": {},
        "overlays": {},
        "mask": {},
        "ccs": {},
    },
    "ssl_train": {
        "enabled": True,
        "arch": "vit_small_patch8_224",
        "epochs": 200,
        "batch_size": 256,
        "k": 10,
        "seed": 0,
        "init": "",
        "recipe": "",
        "workers": 0,
        "dino": {},
        "protocol": "inductive",
    },
    "encode": {"arch": "", "weights": "", "batch_size": 64, "device": "auto", "extra": []},
    "choose_encoder": {"k": 10},
    "index": {},
    "train": {
        "splits": ["batch-separated"],
        "repeats": 1,
        "models": [{"name": "clanet", "aggregator": "gated", "tss": True}],
        "mil": {},
    },
    "evaluate": {},
    "search": {"queries": 3, "k": 6},
    "report": {"k": 10},
}


@dataclass(frozen=True)
class PipelineConfig:
    """A loaded config: its file, name and the full parameters of every stage."""

    path: Path
    name: str
    description: str
    stages: dict[str, dict[str, Any]]


def _check_type(path: Path, where: str, value: Any, default: Any) -> None:
    """Values must have their default's type (ints are accepted where floats are)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ClanetError(f"{path}: {where} must be {type(default).__name__}, got {value!r}")


def _merge(path: Path, stage: str, given: dict[str, Any]) -> dict[str, Any]:
    defaults = DEFAULTS[stage]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ClanetError(
            f"{path}: unknown key {stage}.{unknown[0]} (known: {', '.join(sorted(defaults))})"
        )
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        _check_type(path, f"{stage}.{key}", value, defaults[key])
        merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, str, Any]:
    """``stage.key=value`` (value in TOML syntax, or else a bare string) -> (stage, key, value)."""
    name, sep, raw = text.partition("=")
    stage, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise ClanetError(f"--set {text!r}: expected stage.key=value, e.g. train.repeats=3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return stage, key, value


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read and check a pipeline file; ``overrides`` are ``stage.key=value`` strings."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClanetError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClanetError(f"{path}: not valid TOML ({exc})") from None
    head = data.pop("pipeline", {})
    if head.get("version") != CONFIG_VERSION:
        raise ClanetError(
            f"{path}: [pipeline] version must be {CONFIG_VERSION}, got {head.get('version')!r}"
        )
    unknown = sorted(set(data) - set(STAGES))
    if unknown:
        raise ClanetError(f"{path}: unknown stage [{unknown[0]}] (stages: {', '.join(STAGES)})")
    for text in overrides:
        stage, key, value = parse_override(text)
        if stage not in STAGES:
            raise ClanetError(f"--set {text!r}: unknown stage {stage!r}")
        data.setdefault(stage, {})[key] = value
    stages = {stage: _merge(path, stage, data.get(stage, {})) for stage in STAGES}
    return PipelineConfig(
        path=path,
        name=str(head.get("name", path.stem)),
        description=str(head.get("description", "")),
        stages=stages,
    )
