"""MIL straight from the store (issue 8): bags match the embeddings table, and train -> evaluate
-> predict -> ablation through the CLI on one small synthetic store (random-init ViT-Ti)."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from lancedb.expr import col

from clanet_store.cli import main
from clanet_store.cli import mil as cli_mil
from clanet_store.exports.synth import synth_export
from clanet_store.learn.aggregators import AGGREGATORS
from clanet_store.learn.model_file import load_model, save_model
from clanet_store.learn.splits import SPLIT_KINDS
from clanet_store.learn.training import MILConfig
from clanet_store.learn.tss import TSS_PRIOR_KINDS
from clanet_store.pipelines.encode import encode, load_encoder
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.mil import ABLATION_VARIANTS
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore, embeddings_schema
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.query import vectors
from clanet_store.stores.sequences import filter_schema, list_sequences, load_bags

ARCH = "vit_tiny_patch16_224"
LINES, BATCHES, POSITIONS, TIMEPOINTS = 3, 2, 2, 3


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """36 images: 3 cell lines x 2 batches x 2 positions x 3 time points, 20 patches each."""
    root = tmp_path_factory.mktemp("mil")
    synth_export(root / "export", LINES, BATCHES, POSITIONS, TIMEPOINTS, seed=0)
    ingest(root / "export", root / "store", workers=1)
    encode(root / "store", load_encoder(None, ARCH, "cpu", seed=0))
    return root / "store"


@pytest.fixture(scope="module")
def table(store_path) -> pl.DataFrame:
    """The embeddings table read directly from LanceDB, vectors as a NumPy column."""
    store = EmbeddingStore(store_path)
    arrow = lance.open_table(
        store.patch_store.db, "embeddings_768", schema=embeddings_schema(768)
    ).to_arrow()
    frame = pl.from_arrow(arrow.drop(["embedding"]))
    return frame.with_columns(vector=pl.Series(list(vectors(arrow))))


def run(command: str, code: int = 0, **paths: Path) -> dict | str:
    """Invoke ``clanet-store COMMAND`` in-process, ``{name}`` replaced by ``paths[name]``; the
    parsed JSON with ``--format json``, else the output (stdout and stderr)."""
    args = shlex.split(command.format(**{name: shlex.quote(str(p)) for name, p in paths.items()}))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "json" in args and code == 0 else result.output


def test_bags_match_the_table(store_path, table):
    store = EmbeddingStore(store_path)
    bags, classes = load_bags(store, k=10)
    assert classes == tuple(sorted(table["cell_line"].unique()))
    assert len(bags) == LINES * BATCHES * POSITIONS
    assert [b.key for b in bags] == sorted(table["sequence_id"].unique())
    for bag in bags:
        rows = table.filter(pl.col("sequence_id") == bag.key)
        first = rows.row(0, named=True)
        assert (bag.label, bag.batch, bag.position) == (
            classes.index(first["cell_line"]),
            f"{first['cell_line']}/{first['batch']}",
            f"{first['well']}/{first['location']}",
        )
        assert bag.embeddings.shape == (TIMEPOINTS, 10, 768) and bag.mask.all()
        np.testing.assert_array_equal(bag.times, np.sort(rows["timepoint_h"].unique()))
        for t, time in enumerate(bag.times):
            image = rows.filter((pl.col("timepoint_h") == time) & (pl.col("rank") < 10))
            expected = np.stack(image.sort("rank")["vector"].to_list())
            np.testing.assert_array_equal(bag.embeddings[t], expected)
    records, same = list_sequences(store, k=10)
    assert same == classes
    assert [(r.key, r.label, r.batch, r.position, r.n_images) for r in records] == [
        (b.key, b.label, b.batch, b.position, len(b.times)) for b in bags
    ]


def test_filtered_patches_are_masked_and_classes_extend(store_path, table):
    store = EmbeddingStore(store_path)
    first = table.filter(pl.col("rank") < 10).sort("sequence_id", "timepoint_h", "rank")
    image = first.filter(pl.col("image_id") == first["image_id"][0])
    dropped = image["patch_id"][[0, 4, 9]].to_list()
    where = parse_filters([",".join(f"patch_id!={p}" for p in dropped)], filter_schema())
    bags, _ = load_bags(store, where, k=10)
    bag = bags[0]
    assert bag.mask[0].tolist() == [True] * 7 + [False] * 3 and bag.mask[1:].all()
    kept = image.filter(~pl.col("patch_id").is_in(dropped)).sort("rank")
    np.testing.assert_array_equal(bag.embeddings[0, :7], np.stack(kept["vector"].to_list()))
    assert not bag.embeddings[0, 7:].any()

    line = table["cell_line"].sort()[-1]
    one_line = parse_filters([f"cell_line={line}"], filter_schema())
    bags, classes = load_bags(store, one_line, k=4, classes=("nobody", line))
    assert classes == ("nobody", line)
    assert len(bags) == BATCHES * POSITIONS and {b.label for b in bags} == {1}
    assert all(b.embeddings.shape[1] == 4 for b in bags)
    _, classes = load_bags(store, one_line, k=4, classes=("nobody",))
    assert classes == ("nobody", line)  # a line outside the given classes is appended


def test_embeddings_of_replaced_patches_are_ignored(store_path, tmp_path, table):
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    store = EmbeddingStore(copy)
    gone = table.filter(pl.col("rank") == 0)["patch_id"][0]
    store.table("patches").delete(col("patch_id") == gone)
    image = table.filter(pl.col("patch_id") == gone)["image_id"][0]
    bags, _ = load_bags(store, k=10)
    live = table.filter((pl.col("image_id") == image) & pl.col("rank").is_between(1, 9))
    bag = next(b for b in bags if b.key == live["sequence_id"][0])
    t = int(np.flatnonzero(bag.times == live["timepoint_h"][0])[0])
    assert bag.mask[t].sum() == 9
    np.testing.assert_array_equal(
        bag.embeddings[t, :9], np.stack(live.sort("rank")["vector"].to_list())
    )


def test_train_evaluate_predict_round_trip(store_path, tmp_path):
    models = tmp_path / "models"
    model = models / "gated.pt"
    train = "train --store {store} --split batch-separated --repeat 1 --format json"
    r = run(train + " --epochs 3 --out {out}", store=store_path, out=model)
    split_file = models / "split-batch-separated-r1.json"
    assert model.exists() and r["split_file"] == str(split_file) and not r["split_reused"]
    assert (r["train_sequences"], r["test_sequences"]) == (LINES * POSITIONS, LINES * POSITIONS)
    assert len(r["epochs"]) == 3 and r["encoder_random_init"] and r["config"]["seed"] == 1
    split = json.loads(split_file.read_text())
    assert not set(split["train"]) & set(split["test"])

    e = run("evaluate --store {store} --model {model} --format json", store=store_path, model=model)
    keys = ("sequence_accuracy", "sequence_f1", "batch_accuracy", "batch_f1", "confusion")
    assert {*keys, "classes"} <= set(e)
    assert all(0 <= e[key] <= 1 for key in keys[:4])
    assert np.array(e["confusion"]).sum() == e["test_sequences"] == len(split["test"])
    assert [row["fraction"] for row in e["accuracy_by_fraction"]] == [0.01, 0.25, 0.5, 0.75, 1.0]
    assert "sequence confusion" in run("evaluate --store {s} --model {m}", s=store_path, m=model)

    key = sorted(load_model(model).split.test)[0]
    bags, _ = load_bags(EmbeddingStore(store_path), k=10)
    line, batch = next(b.batch for b in bags if b.key == key).split("/")
    p = run(
        f"predict --store {{s}} --model {{m}} --where 'cell_line={line},batch={batch}' "
        "--min-probability 1 --format json",
        s=store_path,
        m=model,
    )
    assert len(p["sequences"]) == POSITIONS and len(p["batches"]) == 1
    for item in (*p["sequences"], *p["batches"]):
        assert item["labelled"] == line and item["predicted"] in e["classes"]
        assert item["probability"] >= item["runner_up_probability"]
        assert item["warning"].startswith("low confidence")  # every top probability is < 1
    assert "exactly one of" in run("predict --store {s} --model {m}", 2, s=store_path, m=model)
    assert not any(item["in_training"] for item in (*p["sequences"], *p["batches"]))
    assert p["in_training"] == 0 and p["warnings"] == POSITIONS + 1

    # the model's own training batch: marked, and left out of the summary (issue 19)
    key = sorted(load_model(model).split.train)[0]
    line, batch = next(b.batch for b in bags if b.key == key).split("/")
    predict = (
        f"predict --store {{s}} --model {{m}} --where 'cell_line={line},batch={batch}' "
        "--min-probability 1 --format json"
    )
    p = run(predict, s=store_path, m=model)
    assert all(item["in_training"] for item in (*p["sequences"], *p["batches"]))
    assert p["in_training"] == POSITIONS and (p["warnings"], p["mismatches"]) == (0, 0)
    q = run(predict + " --include-training", s=store_path, m=model)
    assert q["include_training"] and q["warnings"] == POSITIONS + 1
    text = run(predict.replace(" --format json", ""), s=store_path, m=model)
    assert "marked TRAINED and not counted" in text

    mean = models / "mean.pt"
    again = run(
        train + " --aggregator mean --no-tss --epochs 1 --out {o}", store=store_path, o=mean
    )
    assert again["split_reused"] and json.loads(split_file.read_text()) == split
    assert load_model(mean).split == load_model(model).split


def test_stale_split_and_foreign_encoder_are_refused(store_path, tmp_path):
    split_file = tmp_path / "split-batch-stratified-r2.json"
    out = tmp_path / "m.pt"
    train = "train --store {store} --split batch-stratified --repeat 2 --epochs 1 --out {out}"
    text = run(train, store=store_path, out=out)
    assert "TSS (reference prior, candidates [1, 2, 3, 4, 5, 6, 7, 8] h, sigma 2.29)" in text
    split = json.loads(split_file.read_text())
    split_file.write_text(json.dumps({**split, "test": [*split["test"], "0000000000000000"]}))
    message = run(train, 1, store=store_path, out=out)
    assert f"{split_file}: 1 split keys are not in the data" in message
    message = run(train + " --model-id feedfeedfeedfeed", 1, store=store_path, out=out)
    assert "no embeddings of model feedfeedfeedfeed" in message

    mil = load_model(out)
    foreign = tmp_path / "foreign.pt"
    save_model(foreign, mil.model, mil.config, mil.classes, mil.split, "feedfeedfeedfeed")
    for command in ("evaluate", "predict --where rank<3"):
        message = run(command + " --store {s} --model {m}", 1, s=store_path, m=foreign)
        assert f"{foreign}: trained on embeddings of encoder feedfeedfeedfeed" in message


def test_predict_a_new_export(store_path, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(store_path, store)
    synth_export(tmp_path / "synth", lines=1, batches=1, positions=1, timepoints=2, seed=5)
    line_dir = next((tmp_path / "synth").iterdir())
    export = tmp_path / "new"
    (export / line_dir.name).mkdir(parents=True)
    next(line_dir.iterdir()).rename(export / line_dir.name / "new-batch")  # a batch not stored
    model = tmp_path / "gated.pt"
    train = "train --store {s} --split batch-stratified --repeat 1 --epochs 2 --out {m}"
    run(train, s=store, m=model)
    images = EmbeddingStore(store).query("images").to_polars().height

    predict = "predict --store {s} --model {m} --export {e} --workers 1"
    message = run(predict + " --seed 1", 1, s=store, m=model, e=export)
    assert "gives encoder" in message and "nothing was ingested" in message
    assert EmbeddingStore(store).query("images").to_polars().height == images

    p = run(predict + " --format json", s=store, m=model, e=export)
    assert p["ingest"]["images_added"] == 2 and p["encode"]["patches_encoded"] > 0
    assert [s["batch"] for s in p["sequences"]] == [f"{line_dir.name}/new-batch"]
    assert p["sequences"][0]["images"] == 2 and len(p["batches"]) == 1


def test_ablation_writes_the_table(store_path, tmp_path):
    out = tmp_path / "ablation" / "results.md"
    command = "ablation --store {s} --repeats 1 --epochs 2 --out {o} --format json"
    r = run(command, s=store_path, o=out)
    assert len(r["runs"]) == 2 * len(ABLATION_VARIANTS)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Aggregation | TSS | Batch-separated: sequence Acc")
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == [v[2] for v in ABLATION_VARIANTS]
    assert all(row.count("±") == 8 for row in rows[1:])
    splits = sorted(p.name for p in out.parent.glob("split-*.json"))
    assert splits == ["split-batch-separated-r1.json", "split-batch-stratified-r1.json"]


def test_cli_choices_and_defaults_are_the_cores():
    assert cli_mil.AGGREGATORS == AGGREGATORS and cli_mil.TSS_PRIOR_KINDS == TSS_PRIOR_KINDS
    assert cli_mil.SPLIT_KINDS == SPLIT_KINDS
    assert (MILConfig.k, MILConfig.epochs) == (cli_mil.DEFAULT_K, cli_mil.DEFAULT_EPOCHS)
