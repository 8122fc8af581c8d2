"""The stages of a declared pipeline, each a thin call of one library function.

A stage takes the run (`Run`: where things are, what earlier stages recorded) and its parameters,
and returns `Done`: a JSON-ready summary and the files it made (the runner checks they still
exist before it skips the stage next time). Stages that write into the store (ingest, encode,
index) are idempotent, so running one again never duplicates data.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clanet_store.errors import ClanetError
from clanet_store.learn.metrics import SCALAR_SCORES
from clanet_store.learn.training import MILConfig
from clanet_store.models.dino import RECIPES, default_recipe
from clanet_store.report.build import write_report
from clanet_store.report.collect import neighbour_gallery

ProgressBar = Callable[[str, str], AbstractContextManager[Callable[[int, int], None]]]


@dataclass
class Run:
    """One run of a pipeline: its folders and what the stages before recorded (``summaries``)."""

    out: Path
    store: Path
    export: Path | None
    bar: ProgressBar
    say: Callable[[str], None]
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """The encoder the embeddings of this run came from (recorded by ``encode``)."""
        return self.summaries["encode"]["model_id"]


@dataclass
class Done:
    """What a stage did: a summary (printed, kept in the run state) and the files it wrote."""

    summary: dict[str, Any]
    files: list[Path]


def synth(run: Run, p: dict[str, Any]) -> Done:
    """A synthetic export in OUT/export (unless the run was given an export)."""
    from clanet_store.exports.synth import synth_export

    if run.export is not None:
        return Done({"export": str(run.export), "generated": False}, [run.export])
    target = run.out / "export"
    if target.exists():  # an older synthetic export with other parameters
        shutil.rmtree(target)
    with run.bar("synth", "image") as update:
        total = p["lines"] * p["batches"] * p["positions"] * p["timepoints"]
        done = iter(range(1, total + 1))
        result = synth_export(target, **p, on_image=lambda _: update(next(done), total))
    run.export = target
    return Done({"export": str(target), "generated": True, "images": result.n_images}, [target])


def ingest(run: Run, p: dict[str, Any]) -> Done:
    """Mask + CCS over the export with Dask into the patch store."""
    from clanet_store.pipelines.ingest import ingest as ingest_export

    with run.bar("ingest", "image") as update:
        report = ingest_export(
            _export(run),
            run.store,
            plate_map=p["plate_map"] or None,
            workers=p["workers"] or None,
            progress=update,
            commit_every=p["commit_every"],
        )
    return Done(report.as_dict(), [run.store])


def _export(run: Run) -> Path:
    if run.export is None:
        raise ClanetError("no export: give one, or keep the synth stage")
    return run.export


def _checkpoint(run: Run) -> Path:
    return run.out / "ssl" / "checkpoint.pt"


def ssl_train(run: Run, p: dict[str, Any]) -> Done:
    """A DINO run on the store's patches (skipped when ``enabled = false``).

    ``dino`` changes numbers of ``recipe`` (default: by ``init``). A run that collapses does not
    stop the pipeline: the stage says why, and its summary gives the checkpoint kept (the epoch
    before the collapse; none when the first epoch collapsed, and ``encode`` then embeds with a
    random init of the same arch, which says so).
    """
    from clanet_store.pipelines.ssl_train import TrainingCollapsed, TrainProgress
    from clanet_store.pipelines.ssl_train import ssl_train as train

    if not p["enabled"]:
        return Done({"enabled": False}, [])
    out = _checkpoint(run)
    out.unlink(missing_ok=True)  # made with other parameters or data: start afresh
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = p["recipe"] or default_recipe(p["init"] or None)
    if recipe not in RECIPES:
        raise ClanetError(f"ssl_train.recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    try:
        dino = dataclasses.replace(RECIPES[recipe], **p["dino"])
    except TypeError as exc:
        raise ClanetError(f"ssl_train.dino: {exc}") from None
    with run.bar("ssl-train", "step") as update:

        def step(event: TrainProgress) -> None:
            update(event.step, event.total_steps)

        try:
            r = train(
                run.store,
                out,
                epochs=p["epochs"],
                batch_size=p["batch_size"],
                arch=p["arch"],
                init=p["init"] or None,
                k=p["k"],
                progress=step,
                recipe=recipe,
                dino=dino,
                seed=p["seed"],
                workers=p["workers"],
            )
            collapsed = None
        except TrainingCollapsed as exc:
            r, collapsed = exc.summary, str(exc)
            run.say(f"WARNING: {collapsed}")
    keep = ("arch", "epochs", "patches", "batch_size", "embedding_dim", "recipe", "losses")
    summary = {k: r[k] for k in keep} | {"probes": r["probes"], "seconds": r["seconds"]}
    checkpoint = str(out) if out.exists() else None
    return Done(
        {"enabled": True, "checkpoint": checkpoint, "collapsed": collapsed, **summary},
        [out] if checkpoint else [],
    )


def encode(run: Run, p: dict[str, Any]) -> Done:
    """Embed every patch: with ``weights``, else the ssl_train checkpoint, else a seeded init."""
    from clanet_store.pipelines.encode import encode as encode_store
    from clanet_store.pipelines.encode import load_encoder

    ssl = run.summaries.get("ssl_train", {})
    weights = p["weights"] or ssl.get("checkpoint")
    encoder = load_encoder(weights, p["arch"] or ssl.get("arch"), p["device"])
    with run.bar("encode", "patch") as update:
        report = encode_store(run.store, encoder, batch_size=p["batch_size"], progress=update)
    return Done(report.as_dict(), [run.store])


def index(run: Run, p: dict[str, Any]) -> Done:
    """Scalar and vector indexes; compaction."""
    from clanet_store.pipelines.search import build_index

    return Done(build_index(run.store, run.model_id), [run.store])


def model_path(run: Run, name: str, split: str, repeat: int) -> Path:
    """Where ``train`` puts one model (its split files go beside it)."""
    return run.out / "models" / f"{name}-{split}-r{repeat}.pt"


def train(run: Run, p: dict[str, Any]) -> Done:
    """Every model variant on every split and repeat, on the run's embeddings."""
    from clanet_store.pipelines.mil import train as train_model

    runs = [
        (model, split, repeat)
        for split in p["splits"]
        for repeat in range(1, p["repeats"] + 1)
        for model in p["models"]
    ]
    trained, files = [], []
    for model, split, repeat in runs:
        try:
            config = MILConfig(
                aggregator=model["aggregator"], tss=model["tss"], seed=repeat, **p["mil"]
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ClanetError(f"train: model {model}: {exc}") from None
        out = model_path(run, model["name"], split, repeat)
        out.parent.mkdir(parents=True, exist_ok=True)
        with run.bar(f"train {out.stem}", "epoch") as update:
            r = train_model(
                run.store,
                out,
                split,
                repeat,
                config,
                run.model_id,
                progress=lambda stats, n=config.epochs: update(stats["epoch"], n),
            )
        keep = ("model", "split", "repeat", "train_sequences", "test_sequences", "train_seconds")
        trained.append({"name": model["name"], **{k: r[k] for k in keep}})
        files.append(out)
    return Done({"models": trained}, files)


def evaluate(run: Run, p: dict[str, Any]) -> Done:
    """Scores of every trained model on its split's test side, each beside its model file."""
    from clanet_store.pipelines.mil import evaluate as evaluate_model

    results, files = [], []
    for model in run.summaries["train"]["models"]:
        if not model["test_sequences"]:
            reason = (
                f"{model['model']}: its {model['split']} split has no test sequences (every cell "
                "line has a single batch?); the model is trained on all of them, not evaluated"
            )
            run.say(reason)
            results.append({"name": model["name"], "model": model["model"], "skipped": reason})
            continue
        r = evaluate_model(run.store, model["model"])
        path = Path(model["model"]).with_suffix(".eval.json")
        path.write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
        results.append(
            {
                "name": model["name"],
                "model": model["model"],
                "split": r["split"],
                "repeat": r["repeat"],
                **{k: r[k] for k in SCALAR_SCORES},
            }
        )
        files.append(path)
    return Done({"evaluations": results}, files)


def search(run: Run, p: dict[str, Any]) -> Done:
    """A cross-batch example: neighbours of a few patches from other batches, as a gallery."""
    from clanet_store.stores.embedding_store import EmbeddingStore

    png, queries = neighbour_gallery(EmbeddingStore(run.store), run.model_id, p["queries"], p["k"])
    files = []
    if png is not None:
        gallery = run.out / "neighbours.png"
        gallery.write_bytes(png)
        files.append(gallery)
    path = run.out / "search.json"
    path.write_text(json.dumps({"queries": queries}, indent=2), encoding="utf-8")
    return Done({"queries": queries, "gallery": str(files[0]) if files else None}, [path, *files])


def report(run: Run, p: dict[str, Any]) -> Done:
    """The HTML report of the store and the trained models."""
    evaluated = run.summaries.get("evaluate", {}).get("evaluations", [])
    models = [m["model"] for m in evaluated if "skipped" not in m]
    notes = [m["skipped"] for m in evaluated if "skipped" in m]
    exports = [run.export] if run.export else []
    r = write_report(
        run.store, run.out / "report.html", models, run.model_id, p["k"], run.say, exports, notes
    )
    return Done(r, [Path(r["report"])])


STAGE_FUNCTIONS: dict[str, Callable[[Run, dict[str, Any]], Done]] = {
    "synth": synth,
    "ingest": ingest,
    "ssl_train": ssl_train,
    "encode": encode,
    "index": index,
    "train": train,
    "evaluate": evaluate,
    "search": search,
    "report": report,
}
