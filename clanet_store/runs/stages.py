"""The stages of a declared pipeline, each a thin call of one library function.

A stage takes the run (`Run`: where things are, what earlier stages recorded) and its parameters,
and returns `Done`: a JSON-ready summary and the files it made (the runner checks they still
exist before it skips the stage next time). Stages that write into the store (ingest, encode,
index) are idempotent, so running one again never duplicates data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clanet_store.errors import ClanetError
from clanet_store.imaging.params import STEPS
from clanet_store.learn.training import MILConfig
from clanet_store.progress import Progress, as_stage
from clanet_store.report.build import write_report
from clanet_store.report.collect import neighbour_gallery

if TYPE_CHECKING:
    from clanet_store.pipelines.ssl_report import SSLReport

SSL_PROTOCOLS = ("inductive", "transductive")


@dataclass
class Run:
    """One run of a pipeline: its folders, the (split, repeat) pairs its train stage will use
    (``train_splits``: ssl_train needs them for per-split encoders) and what the stages before
    recorded (``summaries``)."""

    out: Path
    store: Path
    export: Path | None
    progress: Progress
    say: Callable[[str], None]
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_splits: list[tuple[str, int]] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        """The encoder of this run's index, search and report: the one ``choose_encoder``
        picked for the first split, else the one ``encode`` wrote."""
        chosen = self.summaries.get("choose_encoder", {}).get("model_id")
        return chosen or self.summaries["encode"]["model_id"]


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
    total = p["lines"] * p["batches"] * p["positions"] * p["timepoints"]
    done = iter(range(1, total + 1))
    result = synth_export(target, **p, on_image=lambda _: run.progress("synth", next(done), total))
    run.export = target
    return Done({"export": str(target), "generated": True, "images": result.n_images}, [target])


def ingest(run: Run, p: dict[str, Any]) -> Done:
    """Mask + CCS over the export with Dask into the patch store."""
    from clanet_store.pipelines.ingest import ingest as ingest_export

    params = {step: _params(kind, f"ingest.{step}", p[step]) for step, kind in STEPS.items()}
    report = ingest_export(
        _export(run),
        run.store,
        plate_map=p["plate_map"] or None,
        workers=p["workers"] or None,
        progress=as_stage(run.progress, "ingest"),
        commit_every=p["commit_every"],
        mask_params=params["mask"],
        ccs_params=params["ccs"],
        decode_params=params["decode"],
        overlay_params=params["overlays"],
    )
    return Done(report.as_dict(), [run.store])


def _params(kind: type, where: str, values: dict[str, Any]) -> Any:
    """A method-parameter dataclass from a pipeline table, errors naming the table."""
    try:
        return kind(**values)
    except (TypeError, ValueError) as exc:
        raise ClanetError(f"{where}: {exc}") from None


def _export(run: Run) -> Path:
    if run.export is None:
        raise ClanetError("no export: give one, or keep the synth stage")
    return run.export


def _checkpoint(run: Run) -> Path:
    return run.out / "ssl" / "checkpoint.pt"


def ssl_train(run: Run, p: dict[str, Any]) -> Done:
    """DINO on the store's patches (skipped when ``enabled = false``).

    ``protocol = "inductive"`` (the default): one encoder per split and repeat of the train stage,
    trained on that split's training side only (its split file is drawn here, from the patches
    table, and reused by train); ``"transductive"``: one encoder on every patch, test sides
    included. ``dino`` changes numbers of ``recipe`` (default: by ``init``). A run that collapses
    does not stop the pipeline: the stage says why, and its summary gives the checkpoint kept (the
    epoch before the collapse; none when the first epoch collapsed, and ``encode`` then embeds
    with a random init of the same arch, which says so).
    """
    if not p["enabled"]:
        return Done({"enabled": False}, [])
    from clanet_store.pipelines.ssl_train import stage_recipe

    if p["protocol"] not in SSL_PROTOCOLS:
        raise ClanetError(f"ssl_train.protocol must be one of {', '.join(SSL_PROTOCOLS)}")
    stage_recipe(p)  # a bad recipe or dino table fails before any run
    keep = ("arch", "epochs", "patches", "batch_size", "embedding_dim", "recipe", "losses")
    if p["protocol"] == "transductive":
        runs = {"": (_checkpoint(run), None)}
    else:
        runs = {
            name: (run.out / "ssl" / f"checkpoint-{name}.pt", split)
            for name, split in _run_splits(run).items()
        }
    results = {name: _dino(run, p, out, split) for name, (out, split) in runs.items()}
    # A run that collapsed in its first epoch kept no checkpoint: encode then uses a random init.
    kept = {name: str(out) if out.exists() else None for name, (out, _) in runs.items()}
    first = next(iter(results.values())).as_dict()
    summary = {
        "enabled": True,
        "protocol": p["protocol"],
        "checkpoint": next(iter(kept.values())),
        **({"checkpoints": kept} if p["protocol"] == "inductive" else {}),
        "collapsed": {name: r.collapsed for name, r in results.items() if r.collapsed},
        **{k: first[k] for k in keep},
        "probes": first["probes"],
        "patches_per_split": [r.patches for r in results.values()],
        "seconds": sum(r.seconds for r in results.values()),
    }
    return Done(summary, [Path(path) for path in kept.values() if path])


def _run_splits(run: Run) -> dict[str, Any]:
    """The train stage's splits by name (``KIND-rR``), drawn from the patches table into
    OUT/models or read from there: ssl_train, choose_encoder and train use the same ones."""
    from clanet_store.pipelines.inductive import patch_sequences
    from clanet_store.pipelines.split_files import split_for
    from clanet_store.stores.patch_store import PatchStore

    records = patch_sequences(PatchStore(run.store))
    return {
        f"{kind}-r{repeat}": split_for(records, kind, repeat, run.out / "models")[0]
        for kind, repeat in run.train_splits
    }


def _dino(run: Run, p: dict[str, Any], out: Path, split: Any) -> SSLReport:
    """One ssl-train run into ``out`` (afresh), on the training side of ``split`` if given
    (`ssl_train.stage_run`: a collapse is said and recorded, not raised)."""
    from clanet_store.pipelines.ssl_train import stage_run

    name = "ssl-train" if split is None else f"ssl-train {split.kind} r{split.repeat}"

    def step(event: Any) -> None:
        run.progress(name, event.step, event.total_steps)

    return stage_run(run.store, out, p, split, step, run.say)


EXTRA_ENCODERS = ("classic",)


def encode(run: Run, p: dict[str, Any]) -> Done:
    """Embed every patch: with ``weights``, else the ssl_train checkpoint(s) (one encoder per
    split with the inductive protocol), else a seeded init; then with each training-free
    encoder of ``extra`` (``classic``). ``choose_encoder`` picks among them."""
    from clanet_store.pipelines.encode import classic_encoder, load_encoder
    from clanet_store.pipelines.encode import encode as encode_store

    unknown = sorted(set(p["extra"]) - set(EXTRA_ENCODERS))
    if unknown:
        raise ClanetError(f"encode.extra: {unknown[0]!r} is not one of {', '.join(EXTRA_ENCODERS)}")
    ssl = run.summaries.get("ssl_train", {})
    per_split = {} if p["weights"] else ssl.get("checkpoints", {})
    sources = per_split or {"": p["weights"] or ssl.get("checkpoint")}
    reports = {}
    for name, weights in sources.items():
        encoder = load_encoder(weights, p["arch"] or ssl.get("arch"), p["device"])
        reports[name] = encode_store(
            run.store,
            encoder,
            batch_size=p["batch_size"],
            progress=as_stage(run.progress, f"encode {name}".strip()),
        )
    extra = {}
    for name in p["extra"]:
        extra[name] = encode_store(
            run.store,
            classic_encoder(run.store),
            batch_size=p["batch_size"],
            progress=as_stage(run.progress, f"encode {name}"),
        ).model_id
    summary = next(iter(reports.values())).as_dict()
    if per_split:
        summary["model_ids"] = {name: r.model_id for name, r in reports.items()}
    summary["extra_model_ids"] = extra
    return Done(summary, [run.store])


def choose_encoder(run: Run, p: dict[str, Any]) -> Done:
    """For each split of the train stage, the encoder its models are trained on: the SSL
    encoder of that split or an ``encode.extra`` one, judged on the split's training side only
    (`pipelines.choose_encoder`); then every encoder of the run is evaluated on the whole store
    for ``info`` and the report's Encoders section."""
    from clanet_store.pipelines.choose_encoder import choose_encoder as choose
    from clanet_store.pipelines.evaluate_encoder import evaluate_encoders

    encoded = run.summaries["encode"]
    extra = list(encoded.get("extra_model_ids", {}).values())
    choices = {}
    for name, split in _run_splits(run).items():
        own = encoded.get("model_ids", {}).get(name, encoded["model_id"])
        choice = choose(run.store, [own, *extra], split, top_k=p["k"])
        run.say(f"encoder for {choice.split}: {choice.reason}")
        choices[name] = choice
    ids = list(dict.fromkeys([*encoded.get("model_ids", {}).values(), encoded["model_id"], *extra]))
    evaluate_encoders(run.store, ids, top_k=p["k"])
    first = next(iter(choices.values()), None)
    return Done(
        {
            "model_id": first.model_id if first else encoded["model_id"],
            "model_ids": {name: c.model_id for name, c in choices.items()},
            "choices": [c.as_dict() for c in choices.values()],
        },
        [run.store],
    )


def index(run: Run, p: dict[str, Any]) -> Done:
    """Scalar and vector indexes; compaction."""
    from clanet_store.pipelines.search import build_index

    return Done(build_index(run.store, run.model_id).as_dict(), [run.store])


def model_path(run: Run, name: str, split: str, repeat: int) -> Path:
    """Where ``train`` puts one model (its split files go beside it)."""
    return run.out / "models" / f"{name}-{split}-r{repeat}.pt"


def train(run: Run, p: dict[str, Any]) -> Done:
    """Every model variant on every split and repeat, on the run's embeddings (with per-split
    encoders, each split's own); each model file records whether its encoder saw the test side."""
    from clanet_store.pipelines.mil import train as train_model

    model_ids = run.summaries["choose_encoder"]["model_ids"]
    ssl = run.summaries.get("ssl_train", {})

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
        name = f"{split}-r{repeat}"
        r = train_model(
            run.store,
            out,
            split,
            repeat,
            config,
            model_ids.get(name, run.model_id),
            progress=as_stage(run.progress, f"train {out.stem}"),
            ssl_checkpoint=ssl.get("checkpoints", {}).get(name, ssl.get("checkpoint")),
        )
        keep = ("model", "split", "repeat", "train_sequences", "test_sequences", "train_seconds")
        keep += ("encoder_model_id", "encoder_training")
        summary = r.as_dict()
        trained.append({"name": model["name"], **{k: summary[k] for k in keep}})
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
        path.write_text(json.dumps(r.as_dict(), indent=2, default=str), encoding="utf-8")
        results.append(
            {
                "name": model["name"],
                "model": model["model"],
                "split": r.split,
                "repeat": r.repeat,
                "encoder_training": r.seen.encoder_training,
                **r.scalar_scores,
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
    choices = run.summaries.get("choose_encoder", {}).get("choices", [])
    r = write_report(
        run.store,
        run.out / "report.html",
        models,
        run.model_id,
        p["k"],
        run.say,
        exports,
        notes,
        encoder_notes=[f"Models of {c['split']} trained on {c['reason']}" for c in choices],
    )
    return Done(r.as_dict(), [Path(r.report)])


STAGE_FUNCTIONS: dict[str, Callable[[Run, dict[str, Any]], Done]] = {
    "synth": synth,
    "ingest": ingest,
    "ssl_train": ssl_train,
    "encode": encode,
    "choose_encoder": choose_encoder,
    "index": index,
    "train": train,
    "evaluate": evaluate,
    "search": search,
    "report": report,
}
