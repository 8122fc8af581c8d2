"""Run a declared pipeline stage by stage, skipping stages whose outputs are up to date.

Every stage gets a key: a hash of its parameters, the key of the stage before it and, for the
stages that read data, a fingerprint of that data (the export's files for ``ingest``; the store's
ingested images, by content hash, for ``ssl_train`` and ``encode``). The keys and outputs of
finished stages are kept in ``OUT/run-state.json``. A stage is skipped when its key equals the
recorded one and every file it made still exists; otherwise it runs, and so does every stage
after it (their keys include its key). ``start_from`` forces a stage and the ones after it.

The state file is written after each stage, so a killed run resumes at the stage it was in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clanet_store import __version__
from clanet_store.errors import ClanetError
from clanet_store.progress import Progress
from clanet_store.runs.config import STAGES, PipelineConfig
from clanet_store.runs.stages import STAGE_FUNCTIONS, Run
from clanet_store.stores.patch_store import PatchStore

STATE_FILE = "run-state.json"
PIPELINE_DIR = Path(__file__).resolve().parent.parent.parent / "pipelines"

Event = Callable[[dict[str, Any]], None]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def export_fingerprint(root: Path) -> str:
    """Every file's relative path, size and modification time under ``root``."""
    if not root.exists():
        return "missing"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return _digest(
        [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    )


def store_fingerprint(path: Path) -> str:
    """The store's ingested images by content (id, content hash, extractor key); stable under
    compaction and re-opening, changed by any image added, replaced, removed or re-extracted
    with other parameters."""
    if not (path / "store.json").exists():
        return "missing"
    images = PatchStore(path).query("images")
    images = images.select("image_id", "content_hash", "status", "extractor_version").to_polars()
    rows = images.filter(images["status"] == "ok").sort("image_id")
    columns = ("image_id", "content_hash", "extractor_version")
    return _digest([rows[column].to_list() for column in columns])


def _inputs(stage: str, run: Run, config: PipelineConfig) -> str | None:
    if stage == "synth":  # an export given by the user replaces the synthetic one
        return str(run.export)
    if stage == "ingest":
        plate_map = config.stages["ingest"]["plate_map"]
        exported = export_fingerprint(run.export) if run.export else "none"
        plate = export_fingerprint(Path(plate_map)) if plate_map else "none"
        return _digest([str(run.store.resolve()), exported, plate])
    if stage == "ssl_train":  # per-split encoders depend on the splits too
        return _digest([store_fingerprint(run.store), run.train_splits])
    if stage == "encode":
        return store_fingerprint(run.store)
    return None


def train_splits(config: PipelineConfig) -> list[tuple[str, int]]:
    """The (split kind, repeat) pairs of the config's train stage, in training order."""
    train = config.stages["train"]
    return [(kind, r) for kind in train["splits"] for r in range(1, train["repeats"] + 1)]


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ClanetError(
            f"{path}: unreadable run state ({exc}); delete it to start over"
        ) from None
    return state if isinstance(state.get("stages"), dict) else {"stages": {}}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Write-then-rename: a killed run never leaves half a state file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _up_to_date(record: dict[str, Any] | None, key: str) -> bool:
    return bool(record) and record["key"] == key and all(Path(f).exists() for f in record["files"])


@dataclass(frozen=True)
class RunReport:
    """One run of a pipeline: where it wrote, and per stage its number, status (ran / up to
    date), time and summary."""

    config: str
    pipeline: str
    out: str
    store: str
    export: str | None
    report: str | None
    stages: list[dict[str, Any]]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_pipeline(
    config: PipelineConfig,
    out: str | Path,
    store: str | Path | None = None,
    export: str | Path | None = None,
    start_from: str | None = None,
    until: str | None = None,
    progress: Progress | None = None,
    on_event: Event | None = None,
) -> RunReport:
    """Run ``config``'s stages into ``out`` (store default: OUT/store; export default: the synth
    stage's OUT/export). ``on_event`` hears each stage start and end; ``progress`` follows
    the stages' work. Returns every stage's status, time and summary."""
    for name in (start_from, until):
        if name is not None and name not in STAGES:
            raise ClanetError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = _read_state(state_path)
    emit = on_event or (lambda _: None)
    run = _new_run(config, out, store, export, progress, emit)
    last = STAGES.index(until) if until else len(STAGES) - 1
    forced = False
    previous = _digest([__version__, config.name])
    results = []
    start = time.perf_counter()
    for number, stage in enumerate(STAGES[: last + 1], start=1):
        forced = forced or stage == start_from
        params = config.stages[stage]
        key = _digest([stage, params, previous, _inputs(stage, run, config)])
        record = state["stages"].get(stage)
        item = {"stage": stage, "number": number, "of": last + 1}
        if not forced and _up_to_date(record, key):
            item |= {"status": "up to date", "seconds": 0.0, "summary": record["summary"]}
        else:
            emit({"event": "start", **item})
            record = _run_stage(stage, run, params, key)
            state["stages"][stage] = record
            state["config"] = str(config.path)
            _write_state(state_path, state)
            item |= {"status": "ran", "seconds": record["seconds"], "summary": record["summary"]}
        run.summaries[stage] = record["summary"]
        if stage == "synth" and run.export is None:
            run.export = Path(record["summary"]["export"])
        emit({"event": "end", **item})
        results.append(item)
        previous = key
    report = run.out / "report.html"
    return RunReport(
        config=str(config.path),
        pipeline=config.name,
        out=str(out),
        store=str(run.store),
        export=str(run.export) if run.export else None,
        report=str(report) if report.exists() and until in (None, "report") else None,
        stages=results,
        seconds=time.perf_counter() - start,
    )


def _new_run(
    config: PipelineConfig,
    out: Path,
    store: str | Path | None,
    export: str | Path | None,
    progress: Progress | None,
    emit: Event,
) -> Run:
    """The shared state the stages read and extend; an export that is not a folder is refused."""
    run = Run(
        out=out,
        store=Path(store).resolve() if store else out / "store",
        export=Path(export).resolve() if export else None,
        progress=progress or _quiet,
        say=lambda text: emit({"event": "note", "text": text}),
        train_splits=train_splits(config),
    )
    if run.export is not None and not run.export.is_dir():
        raise ClanetError(f"{run.export}: the export folder does not exist")
    return run


def _run_stage(stage: str, run: Run, params: dict[str, Any], key: str) -> dict[str, Any]:
    """Run one stage; its record in the state file (key, files, summary, time)."""
    began = time.perf_counter()
    done = STAGE_FUNCTIONS[stage](run, params)
    return {
        "key": key,
        "files": [str(f) for f in done.files],
        "summary": done.summary,
        "seconds": time.perf_counter() - began,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _quiet(stage: str, done: int, total: int | None, /, **numbers: float) -> None:
    """The progress of a run nobody watches."""
