"""`ablation` is inductive by default (issue 19): each split is scored on an encoder whose fitted
parts saw only that split's training side (a classic encoder's statistics; DINO with
--ssl-config), stored like any encoder and reused by a re-run; --transductive keeps one encoder.

One small synthetic store (2 lines x 2 batches x 2 positions x 3 time points) with a classic
encoder fitted on all its patches."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from clanet_store.cli import main
from clanet_store.exports.synth import synth_export
from clanet_store.pipelines import encode as encode_module
from clanet_store.pipelines.encode import classic_encoder, encode
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.split_files import read_split
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.torchfile import load_torch_file


@pytest.fixture(scope="module")
def classic_store(tmp_path_factory) -> tuple[Path, str]:
    """The store and the model_id of its whole-store classic encoder."""
    root = tmp_path_factory.mktemp("ablation")
    synth_export(root / "export", lines=2, batches=2, positions=2, timepoints=3, seed=0)
    ingest(root / "export", root / "store", workers=1)
    return root / "store", encode(root / "store", classic_encoder(root / "store")).model_id


def run(command: str, **paths: Path) -> dict:
    args = shlex.split(command.format(**{name: shlex.quote(str(p)) for name, p in paths.items()}))
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def embedding_rows(store: Path) -> int:
    es = EmbeddingStore(store)
    return sum(es.table(name).count_rows() for name in {e.table for e in es.encoders()})


def test_classic_statistics_are_refitted_on_each_training_side(
    classic_store, tmp_path, monkeypatch
):
    source, base = classic_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    fitted: list[tuple[str, list[int]]] = []
    original = encode_module.classic_fit_rows

    def spy(es, split=None):
        rows = original(es, split)
        fitted.append((f"{split.kind} r{split.repeat}", rows.tolist()))
        return rows

    monkeypatch.setattr(encode_module, "classic_fit_rows", spy)
    out = tmp_path / "ablation" / "table.md"
    command = "ablation --store {s} --repeats 1 --epochs 2 --model-id " + base + " --out {o}"
    r = run(command, s=store, o=out)
    assert r["protocol"] == "inductive" and r["encoder_model_id"] == base
    assert [e["split"] for e in r["encoders"]] == ["batch-separated r1", "batch-stratified r1"]
    assert [name for name, _ in fitted] == [e["split"] for e in r["encoders"]]
    patches = EmbeddingStore(store).query("patches").select("row", "sequence_id").to_polars()
    es = EmbeddingStore(store)
    for encoder, (_, rows) in zip(r["encoders"], fitted, strict=True):
        kind = encoder["split"].split()[0]
        split = read_split(out.parent / f"split-{kind}-r1.json")
        assert encoder["model_id"] != base and encoder["refit"] == "classic statistics"
        assert encoder["encoder_training"] == "inductive"
        # the statistics' sample: patch rows of training sequences only, none of the test side
        seen = set(patches.filter(pl.col("row").is_in(rows))["sequence_id"])
        assert len(rows) > 0 and seen <= set(split.train) and not seen & set(split.test)
        config = json.loads(es.encoder(encoder["model_id"]).config)
        assert config["fit_sequences"] == list(split.train)
        assert config["fit_patches"] == len(rows)
        runs = [run for run in r["runs"] if run["split"] == kind]
        assert {(run["encoder_model_id"], run["encoder_training"]) for run in runs} == {
            (encoder["model_id"], "inductive")
        }
        assert f"`{encoder['model_id']}` INDUCTIVE" in out.read_text()
    assert es.encoder().model_id == base  # the default encoder stays the whole-store one

    before, models = embedding_rows(store), len(EmbeddingStore(store).encoders())
    again = run(command, s=store, o=out)
    assert [e["model_id"] for e in again["encoders"]] == [e["model_id"] for e in r["encoders"]]
    assert len(fitted) == 2  # the recorded statistics were reused, nothing fitted again
    assert embedding_rows(store) == before and len(EmbeddingStore(store).encoders()) == models


def test_transductive_keeps_the_one_encoder(classic_store, tmp_path):
    store, base = classic_store
    out = tmp_path / "table.md"
    command = "ablation --store {s} --repeats 1 --epochs 2 --transductive --model-id " + base
    r = run(command + " --out {o}", s=store, o=out)
    assert r["protocol"] == "transductive" and r["encoder_training"] == ["transductive"]
    assert {e["model_id"] for e in r["encoders"]} == {run["encoder_model_id"] for run in r["runs"]}
    assert {e["model_id"] for e in r["encoders"]} == {base}
    assert all(e["refit"] == "none" for e in r["encoders"])
    assert (
        "protocol transductive" in out.read_text() and f"`{base}` TRANSDUCTIVE" in out.read_text()
    )


def test_ssl_config_trains_dino_on_each_training_side(classic_store, tmp_path):
    source, base = classic_store
    store = tmp_path / "store"
    shutil.copytree(source, store)
    config = tmp_path / "ssl.toml"
    # which patches DINO trains on is the point, not what one step learns: collapse rules off
    config.write_text(
        "[pipeline]\nversion = 1\n[ssl_train]\narch = 'vit_tiny_patch16_224'\nepochs = 1\n"
        "batch_size = 4\nk = 1\n[ssl_train.dino]\nout_dim = 256\nhidden_dim = 256\n"
        "bottleneck_dim = 64\nn_local = 2\ncollapse_uniform = 2.0\ncollapse_one_hot = 0.0\n"
        "collapse_spread = -1.0\n"
    )
    out = tmp_path / "ablation" / "table.md"
    command = "ablation --store {s} --repeats 1 --epochs 1 --ssl-config {c} --out {o}"
    r = run(command, s=store, c=config, o=out)
    assert r["encoder_model_id"] == base and r["encoder_training"] == ["inductive"]
    for encoder in r["encoders"]:
        kind = encoder["split"].split()[0]
        split = read_split(out.parent / f"split-{kind}-r1.json")
        assert encoder["refit"] == "ssl-train" and encoder["collapsed"] is None
        checkpoint = load_torch_file(encoder["checkpoint"], "an ssl-train checkpoint")
        assert checkpoint["split"] == split.as_dict()  # trained on this split's training side
        row = EmbeddingStore(store).encoder(encoder["model_id"])
        assert row.weights_format == "clanet-ssl" and row.arch == "vit_tiny_patch16_224"
    assert len({e["model_id"] for e in r["encoders"]}) == 2
