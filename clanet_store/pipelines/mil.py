"""MIL training, evaluation, prediction and ablation straight from a store (SPEC 6-7, issue 8).

The learning itself is `clanet_store.learn`; this module picks the sequences, keeps the files and
checks that embeddings and models belong together:

- Splits are drawn from ``(SPLIT_SEED, repeat)``, so the repeat number picks the split, and
  written as ``split-<kind>-r<repeat>.json`` next to the model (or the ablation table). An
  existing file is reused as it is, so every model and every ablation run in a folder sees the
  same keys; a file naming sequences the store no longer has is refused (delete it to redraw).
- The training seed (model init, shuffling, TSS) defaults to the repeat number too, so
  ``train --repeat R`` reproduces repeat R of ``ablation`` in the same folder.
- A model file records the encoder ``model_id`` of its embeddings; ``evaluate`` and ``predict``
  refuse a store without embeddings of that encoder, and ``predict --export`` refuses an encoder
  whose ``model_id`` differs before it writes anything.
- Only the sequences a step needs are read: training reads the split's training bags, evaluation
  its test bags (the class list comes from the model file, or from all sequences when training).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clanet_store.errors import ClanetError
from clanet_store.learn import metrics
from clanet_store.learn.aggregators import MILAggregator
from clanet_store.learn.bags import Bag
from clanet_store.learn.inference import predict_proba
from clanet_store.learn.model_file import MILModel, load_model, save_model, training_record
from clanet_store.learn.splits import (
    SPLIT_KINDS,
    Split,
    apply_split,
)
from clanet_store.learn.training import MILConfig, train_mil
from clanet_store.pipelines.evaluate_encoder import Encoder
from clanet_store.pipelines.inductive import encoder_training
from clanet_store.pipelines.mil_reports import (
    AblationReport,
    AddedExport,
    EncoderTraining,
    EvalReport,
    PredictReport,
    TrainReport,
)
from clanet_store.pipelines.split_files import split_for
from clanet_store.progress import Progress
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.encoder_record import EncoderRecord
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.location import StoreLocation
from clanet_store.stores.sequences import filter_schema, list_sequences, load_bags, sequence_filter
from clanet_store.textout import ablation_markdown

if TYPE_CHECKING:
    from clanet_store.models.protocol import Encoder
    from clanet_store.pipelines.split_encoder import SplitEncoder

LOW_PROBABILITY = 0.5
# The rows of the ablation table: (aggregator, TSS, name), CLANet first (paper Tables 3-4).
ABLATION_VARIANTS = (
    ("gated", True, "Gated attention + TSS (CLANet)"),
    ("gated", False, "Gated attention, no TSS"),
    ("mean", False, "Mean pooling"),
    ("max", False, "Max pooling"),
    ("patch-vote", False, "Patch classifier + majority vote"),
)


def _sides(sequences: Sequence[Any], split: Split, path: Path) -> tuple[list[Any], list[Any]]:
    """`apply_split`, refusing a split that names sequences the store does not have."""
    try:
        return apply_split(sequences, split)
    except ValueError as error:
        raise ClanetError(f"{path}: {error}; delete the file to draw a new split") from None


def _encoder(store: EmbeddingStore, model_id: str | None, model_path: Path | None) -> EncoderRecord:
    """The store's encoder ``model_id``, naming the MIL model file when refused."""
    try:
        return store.encoder(model_id)
    except ClanetError as error:
        if model_path is None:
            raise
        raise ClanetError(
            f"{model_path}: trained on embeddings of encoder {model_id}, which {store.path} "
            f"does not have ({error})"
        ) from None


def _load_mil(path: Path) -> MILModel:
    try:
        return load_model(path)
    except ValueError as error:
        raise ClanetError(str(error)) from None


def _fit(
    bags: Sequence[Bag], classes: Sequence[str], config: MILConfig, progress: Progress | None
) -> tuple[MILAggregator, dict[str, Any]]:
    try:
        return train_mil(bags, classes, config, progress)
    except ValueError as error:
        raise ClanetError(f"cannot train: {error}") from None


def _scores(model: MILAggregator, bags: Sequence[Bag]) -> dict[str, Any]:
    """Sequence- and batch-level scores of ``model`` on full sequences."""
    proba = predict_proba(model, bags)
    return metrics.evaluate(
        proba, np.array([bag.label for bag in bags]), [bag.batch for bag in bags]
    )


def train(
    store_path: str | Path,
    out: str | Path,
    split_kind: str,
    repeat: int,
    config: MILConfig,
    model_id: str | None = None,
    progress: Progress | None = None,
    ssl_checkpoint: str | Path | None = None,
) -> TrainReport:
    """Train on the training side of a split of the store's sequences; write the model file.

    ``model_id``: whose embeddings (default: the store's latest encoder). The model file also
    records whether the encoder saw the split's test side (`inductive.encoder_training`, from
    ``ssl_checkpoint`` for an ssl-train encoder), which `evaluate` reports. Returns what was done
    (the JSON of ``clanet-store train``).
    """
    out = Path(out)
    store = EmbeddingStore(store_path)
    recorded = _encoder(store, model_id, None)
    start = time.perf_counter()
    records, classes = list_sequences(store, k=config.k, model_id=recorded.model_id)
    split, path, reused = split_for(records, split_kind, repeat, out.parent)
    train_records, test_records = _sides(records, split, path)
    bags, _ = load_bags(
        store, sequence_filter(split.train), config.k, recorded.model_id, classes=classes
    )
    load_seconds = time.perf_counter() - start
    model, history = _fit(bags, classes, config, progress)
    seen = encoder_training(recorded, split, ssl_checkpoint)
    save_model(
        out, model, config, classes, split, recorded.model_id, training_record(history) | seen
    )
    return TrainReport(
        model=str(out),
        split_file=str(path),
        split_reused=reused,
        split=split_kind,
        repeat=repeat,
        train_sequences=len(train_records),
        test_sequences=len(test_records),
        sequences_outside_split=len(records) - len(train_records) - len(test_records),
        classes=list(classes),
        encoder=Encoder.of(recorded),
        config=config.as_dict(),
        **training_record(history),
        seen=EncoderTraining(**seen),
        load_seconds=load_seconds,
        train_seconds=sum(epoch["seconds"] for epoch in history["epochs"]),
        epochs=history["epochs"],
    )


def evaluate(
    store_path: str | Path, model_path: str | Path, ssl_checkpoint: str | Path | None = None
) -> EvalReport:
    """Score a model on the test side of its split (SPEC 7, paper Fig. 8 included).

    Keys: `metrics.SCALAR_SCORES`, ``confusion`` (sequences; rows true, columns predicted, both
    indexing ``classes``), ``batch_confusion``, ``accuracy_by_fraction`` (rows of fraction, natural,
    reversed), sizes, the encoder and whether it saw the test side (``encoder_training``:
    `inductive.encoder_training`, read from ``ssl_checkpoint`` for an ssl-train encoder).
    """
    model_path = Path(model_path)
    mil = _load_mil(model_path)
    if mil.split is None or not mil.split.test:
        raise ClanetError(f"{model_path}: the model's split has no test sequences to score")
    store = EmbeddingStore(store_path)
    recorded = _encoder(store, mil.encoder_model_id, model_path)
    bags, _ = load_bags(
        store, sequence_filter(mil.split.test), mil.config.k, recorded.model_id, mil.classes
    )
    missing = sorted(set(mil.split.test) - {bag.key for bag in bags})
    if missing:
        raise ClanetError(
            f"{store.path}: {len(missing)} test sequences of {model_path} are not in the store, "
            f"e.g. {missing[0]}"
        )
    curves = metrics.accuracy_by_fraction(lambda index: predict_proba(mil.model, bags, index), bags)
    return EvalReport(
        model=str(model_path),
        split=mil.split.kind,
        repeat=mil.split.repeat,
        aggregator=mil.config.aggregator,
        tss=mil.config.tss,
        encoder=Encoder.of(recorded),
        seen=EncoderTraining(**_seen(recorded, mil, ssl_checkpoint)),
        test_sequences=len(bags),
        test_batches=len({bag.batch for bag in bags}),
        classes=list(mil.classes),
        scores=_scores(mil.model, bags),
        accuracy_by_fraction=[
            {"fraction": f, "natural": curves["natural"][f], "reversed": curves["reversed"][f]}
            for f in curves["natural"]
        ],
    )


def _seen(
    recorded: EncoderRecord, mil: MILModel, ssl_checkpoint: str | Path | None
) -> dict[str, Any]:
    """Whether the encoder saw the test side: from ``ssl_checkpoint`` when given, else as the
    model file recorded it at training time (when that could tell), else as far as the store
    tells."""
    if ssl_checkpoint is None and mil.training.get("encoder_training") in (
        "inductive",
        "transductive",
    ):
        return {key: mil.training[key] for key in ("encoder_training", "encoder_training_why")}
    return encoder_training(recorded, mil.split, ssl_checkpoint)


def _ranked(proba: np.ndarray, classes: Sequence[str], threshold: float) -> list[dict[str, Any]]:
    """Per row: the predicted class, its probability, the runner-up, a low-probability warning."""
    order = np.argsort(-proba, axis=1, kind="stable")
    rows = []
    for p, top in zip(proba, order, strict=True):
        second = top[1] if len(top) > 1 else None
        rows.append(
            {
                "predicted": classes[top[0]],
                "probability": float(p[top[0]]),
                "runner_up": None if second is None else classes[second],
                "runner_up_probability": None if second is None else float(p[second]),
                "warning": f"low confidence: top probability {p[top[0]]:.2f} < {threshold:.2f}"
                if p[top[0]] < threshold
                else None,
            }
        )
    return rows


def _export_encoder(
    store_path: StoreLocation, mil: MILModel, model_path: Path, weights: Path | None, seed: int
) -> Encoder:
    """The encoder of ``mil``'s embeddings, rebuilt from ``weights`` / ``seed``; refused unless
    its model_id is the model's. The arch comes from the store's record of that encoder when it
    has one, else from the checkpoint or the default, as in ``encode``; a recorded classic
    encoder is rebuilt from its recorded statistics."""
    from clanet_store.models.classic import CLASSIC_ARCH
    from clanet_store.pipelines.encode import encoder_for_model, load_encoder

    recorded = None
    if store_path.exists("store.json"):
        encoders = EmbeddingStore(store_path).encoders()
        recorded = next((e for e in encoders if e.model_id == mil.encoder_model_id), None)
    config = recorded.settings if recorded else {}
    if recorded and config["arch"] == CLASSIC_ARCH:
        return encoder_for_model(recorded, weights)  # refuses a weights file
    encoder = load_encoder(
        weights, config.get("arch"), "auto", seed, config.get("normalize", False)
    )
    if encoder.model_id != mil.encoder_model_id:
        origin = f", weights {recorded.weights_source}" if recorded else ""
        raise ClanetError(
            f"{model_path}: trained on embeddings of encoder {mil.encoder_model_id}{origin}, but "
            f"--weights {weights or 'none'} (seed {seed}) gives encoder {encoder.model_id} "
            f"({encoder.weights_source}); nothing was ingested"
        )
    return encoder


def _add_export(
    store_path: StoreLocation,
    export: Path,
    encoder: Encoder,
    plate_map: Path | None,
    workers: int | None,
    progress: Progress | None,
) -> tuple[AddedExport, list[str]]:
    """Ingest and encode ``export`` into the store; the reports and the export's sequence ids.

    Dask and the ingest code are imported here, only when an export is added.
    """
    from clanet_store.exports.scan import scan_export
    from clanet_store.pipelines.encode import encode
    from clanet_store.pipelines.ingest import ingest

    ids = scan_export(export, plate_map).manifest["sequence_id"].unique().to_list()
    if not ids:
        raise ClanetError(f"{export}: no image of the export can be used")
    ingested = ingest(export, store_path, plate_map, workers, progress=progress)
    encoded = encode(store_path, encoder, progress=progress)
    return AddedExport(str(export), ingested.as_dict(), encoded.as_dict()), ids


def predict(
    store_path: str | Path,
    model_path: str | Path,
    where: Sequence[str] = (),
    export: str | Path | None = None,
    plate_map: str | Path | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    workers: int | None = None,
    threshold: float = LOW_PROBABILITY,
    progress: Progress | None = None,
    include_training: bool = False,
) -> PredictReport:
    """Authenticate sequences: per sequence and per batch, the predicted cell line and more.

    Sequences on the training side of the model's split are marked ``in_training`` (a match
    there is no evidence), and they count in ``warnings`` / ``mismatches`` and in the batch
    means of held-out sequences only with ``include_training``.

    With ``export`` the export is first ingested and encoded into the store (with the encoder
    ``weights`` / random-init ``seed``, refused unless it is the model's encoder) and its
    sequences are predicted; otherwise the stored sequences passing ``where`` (e.g.
    ``["batch=b3"]``, every stored sequence when empty). Batch level: the mean softmax of the
    batch's sequences (SPEC 7). ``progress`` follows ingest and encode.
    """
    store_path, model_path = StoreLocation.parse(store_path), Path(model_path)
    mil = _load_mil(model_path)
    added = None
    if export is not None:
        encoder = _export_encoder(store_path, mil, model_path, weights, seed)
        added, ids = _add_export(store_path, Path(export), encoder, plate_map, workers, progress)
        expr = sequence_filter(ids)
    else:
        expr = parse_filters(where, filter_schema())
    store = EmbeddingStore(store_path)
    recorded = _encoder(store, mil.encoder_model_id, model_path)
    bags, classes = load_bags(store, expr, mil.config.k, recorded.model_id, mil.classes)
    bags.sort(key=lambda bag: (bag.batch, bag.position))
    proba = predict_proba(mil.model, bags)
    trained = set(mil.split.train if mil.split is not None else ())
    in_training = np.array([bag.key in trained for bag in bags], dtype=bool)
    sequences = _sequence_rows(bags, in_training, _ranked(proba, mil.classes, threshold), classes)
    batches = _batch_level(bags, proba, in_training, classes, mil.classes, threshold,
                           include_training)  # fmt: skip
    batches.sort(key=lambda item: (item["batch"], item["in_training"]))
    for item in (*sequences, *batches):
        item["matches_label"] = item["predicted"] == item["labelled"]
    counted = [i for i in (*sequences, *batches) if include_training or not i["in_training"]]
    return PredictReport(
        model=str(model_path),
        where=list(where),
        added=added,
        encoder=Encoder.of(recorded),
        classes=list(mil.classes),
        threshold=threshold,
        include_training=include_training,
        sequences=sequences,
        batches=batches,
        in_training=int(in_training.sum()),
        warnings=sum(item["warning"] is not None for item in counted),
        mismatches=sum(not item["matches_label"] for item in counted),
    )


def _sequence_rows(
    bags: Sequence[Bag],
    in_training: np.ndarray,
    ranked: list[dict[str, Any]],
    classes: Sequence[str],
) -> list[dict[str, Any]]:
    """`predict`'s sequence rows: the bag's keys, label and its ranked prediction."""
    return [
        {
            "sequence_id": bag.key,
            "batch": bag.batch,
            "position": bag.position,
            "labelled": classes[bag.label],
            "images": len(bag.times),
            "in_training": bool(seen),
            **top,
        }
        for bag, seen, top in zip(bags, in_training, ranked, strict=True)
    ]


def _batch_level(
    bags: Sequence[Bag],
    proba: np.ndarray,
    in_training: np.ndarray,
    classes: Sequence[str],
    model_classes: Sequence[str],
    threshold: float,
    include_training: bool,
) -> list[dict[str, Any]]:
    """`predict`'s batch rows: the held-out and the trained sequences of a batch are two rows,
    unless ``include_training`` pools them (a row is then in_training when any of its
    sequences is)."""
    groups = [np.ones_like(in_training)] if include_training else [~in_training, in_training]
    return [
        row
        for chosen in groups
        if chosen.any()
        for row in _batch_rows(
            [bag for bag, c in zip(bags, chosen, strict=True) if c],
            proba[chosen],
            in_training[chosen],
            classes,
            model_classes,
            threshold,
        )
    ]


def _batch_rows(
    bags: Sequence[Bag],
    proba: np.ndarray,
    in_training: np.ndarray,
    classes: Sequence[str],
    model_classes: Sequence[str],
    threshold: float,
) -> list[dict[str, Any]]:
    """Per batch of ``bags``: the mean softmax of its sequences, ranked, with its label."""
    labels = np.array([bag.label for bag in bags])
    batch_keys = [bag.batch for bag in bags]
    keys, means, batch_labels = metrics.batch_proba(proba, labels, batch_keys)
    per_batch = Counter(batch_keys)
    trained = {key for key, seen in zip(batch_keys, in_training, strict=True) if seen}
    return [
        {
            "batch": key,
            "labelled": classes[label],
            "sequences": per_batch[key],
            "in_training": key in trained,
            **ranked,
        }
        for key, label, ranked in zip(
            keys, batch_labels, _ranked(means, model_classes, threshold), strict=True
        )
    ]


def ablation(
    store_path: str | Path,
    out: str | Path,
    repeats: int = 3,
    epochs: int = MILConfig.epochs,
    k: int = MILConfig.k,
    model_id: str | None = None,
    progress: Progress | None = None,
    ssl_checkpoint: str | Path | None = None,
    *,
    transductive: bool = False,
    ssl: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
) -> AblationReport:
    """Every `ABLATION_VARIANTS` on both split kinds, ``repeats`` repeats each; writes ``out``.

    Inductive by default: each split is scored on the encoder `split_encoder.split_encoder`
    gives for it from ``model_id`` (default: the latest): classic statistics refitted on the
    split's training side; with ``ssl`` (a pipeline's ``[ssl_train]`` table) DINO trained on it;
    both kept for re-runs. ``transductive``: every split on the one given encoder. Each run says
    its encoder's model_id and whether it saw the test side (``ssl_checkpoint`` as in
    `evaluate`). Split files go next to ``out``. ``progress`` follows the per-split encoders'
    fitting and encoding and, as stage ``ablation``, the epochs of all runs together.
    """
    from clanet_store.pipelines.split_encoder import given_encoder, split_encoder

    out = Path(out)
    if repeats < 1:
        raise ClanetError(f"repeats must be >= 1, got {repeats}")
    if transductive and ssl is not None:
        raise ClanetError("an ssl-train config trains one encoder per split: not transductive")
    store = EmbeddingStore(store_path)
    recorded = _encoder(store, model_id, None)
    records, classes = list_sequences(store, k=k, model_id=recorded.model_id)
    encoder_for = (
        functools.partial(given_encoder, recorded, checkpoint=ssl_checkpoint)
        if transductive
        else lambda split: split_encoder(
            store_path, recorded, split, out.parent, ssl, ssl_checkpoint, progress, say
        )
    )
    runs, encoders, test_sizes = _ablation_runs(
        store, records, classes, encoder_for, out.parent, repeats, MILConfig(k=k, epochs=epochs),
        progress,
    )  # fmt: skip
    report = AblationReport(
        out=str(out),
        store=str(store.path),
        encoder=Encoder.of(recorded),
        protocol="transductive" if transductive else "inductive",
        classes=list(classes),
        sequences=len(records),
        batches=len({record.batch for record in records}),
        k=k,
        epochs=epochs,
        repeats=repeats,
        test_sequences=test_sizes,
        encoder_training=sorted({r["encoder_training"] for r in runs}),
        encoders=encoders,
        summary=_ablation_summary(runs),
        runs=runs,
        markdown="",
    )
    markdown = ablation_markdown(report.as_dict())
    out.write_text(markdown)
    return dataclasses.replace(report, markdown=markdown)


def _ablation_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant, mean and std over repeats of each score, per split kind."""
    return [
        {
            "name": name,
            "aggregator": aggregator,
            "tss": tss,
            **{
                kind: metrics.mean_std(
                    [r for r in runs if r["variant"] == name and r["split"] == kind]
                )
                for kind in SPLIT_KINDS
            },
        }
        for aggregator, tss, name in ABLATION_VARIANTS
    ]


def _ablation_runs(
    store: EmbeddingStore,
    records: Sequence[Any],
    classes: Sequence[str],
    encoder_for: Callable[[Split], SplitEncoder],
    split_dir: Path,
    repeats: int,
    base: MILConfig,
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[int]]]:
    """Every variant on every split (``repeats`` of each kind), each split's bags embedded by
    ``encoder_for(split)``: the runs' scores, the encoders, the test sizes per kind."""
    loaded: tuple[str, list[Bag]] = ("", [])  # the bags of the last split's encoder
    runs: list[dict[str, Any]] = []
    encoders: list[dict[str, Any]] = []
    test_sizes: dict[str, list[int]] = {}
    epochs = _epoch_counter(
        progress, len(ABLATION_VARIANTS) * len(SPLIT_KINDS) * repeats * base.epochs
    )
    for kind in SPLIT_KINDS:
        for repeat in range(1, repeats + 1):
            split, path, _ = split_for(records, kind, repeat, split_dir)
            if not _sides(records, split, path)[1]:
                raise ClanetError(f"{path}: no test sequences (every cell line has one batch?)")
            encoder = encoder_for(split)
            encoders.append(encoder.as_dict())
            if loaded[0] != encoder.model_id:
                bags, _ = load_bags(store, k=base.k, model_id=encoder.model_id, classes=classes)
                loaded = (encoder.model_id, bags)
            train_bags, test_bags = _sides(loaded[1], split, path)
            test_sizes.setdefault(kind, []).append(len(test_bags))
            seen = {
                "encoder_model_id": encoder.model_id,
                "encoder_training": encoder.encoder_training,
                "encoder_training_why": encoder.encoder_training_why,
            }
            for aggregator, tss, name in ABLATION_VARIANTS:
                config = dataclasses.replace(base, aggregator=aggregator, tss=tss, seed=repeat)
                model, _ = _fit(train_bags, classes, config, epochs)
                scores = _scores(model, test_bags)
                runs.append(
                    {"split": kind, "repeat": repeat, "variant": name, **seen}
                    | {key: scores[key] for key in metrics.SCALAR_SCORES}
                )
    return runs, encoders, test_sizes


def _epoch_counter(progress: Progress | None, total: int) -> Progress | None:
    """``progress`` as one ``ablation`` stage of ``total`` epochs over every run's epochs."""
    if progress is None:
        return None
    done = iter(range(1, total + 1))

    def count(_: str, epoch: int, epochs: int | None, /, **numbers: float) -> None:
        progress("ablation", next(done), total, **numbers)

    return count
