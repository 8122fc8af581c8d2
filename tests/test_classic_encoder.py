"""The classic encoder: deterministic, versioned, blind to brightness / contrast and to where a
patch sits in the store, finite on flat patches; a store encoded with it goes through search,
train, evaluate and predict like any other; a SIGKILLed classic encode resumes exactly."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from test_encode import kill_and_resume

from clanet_store.cli import main
from clanet_store.exports.synth import synth_export
from clanet_store.models import classic
from clanet_store.models.classic import (
    N_FEATURES,
    ClassicConfig,
    ClassicEncoder,
    describe,
    fit_statistics,
)
from clanet_store.pipelines import encode as encode_module
from clanet_store.pipelines.encode import classic_encoder, classic_fit_rows, encoder_for_model
from clanet_store.pipelines.ingest import ingest
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.query import vectors

BIN = Path(sys.executable).parent


def _ok(args: list[str]) -> dict:
    """Run the CLI in-process with ``--format json``; it must succeed. Returns the JSON."""
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    """Textured uint8 patches: smoothed noise of several grain sizes on a grey level."""
    rng = np.random.default_rng(0)
    out = []
    for grain in (1, 2, 4, 8, 3, 6):
        small = rng.normal(0, 25, (112 // grain + 1, 112 // grain + 1))
        big = np.kron(small, np.ones((grain, grain)))[:112, :112]
        out.append(np.clip(100 + big, 0, 255))
    return np.stack(out).astype(np.uint8)


@pytest.fixture(scope="module")
def encoder(patches) -> ClassicEncoder:
    return ClassicEncoder(fit_statistics(describe(patches)))


def test_vector_depends_only_on_the_pixels(patches, encoder):
    together = encoder.embed(patches)
    assert together.shape == (len(patches), N_FEATURES) and together.dtype == np.float32
    for i, patch in enumerate(patches):
        np.testing.assert_array_equal(encoder.embed(patch[None]), together[i : i + 1])
    shuffled = np.random.default_rng(1).permutation(len(patches))
    np.testing.assert_array_equal(encoder.embed(patches[shuffled]), together[shuffled])
    one_thread = ClassicEncoder(encoder.config, threads=1).embed(patches)
    np.testing.assert_array_equal(one_thread, together)
    known = ClassicEncoder(encoder.config, known=(patches[:3], describe(patches[:3])))
    np.testing.assert_array_equal(known.embed(patches[::-1]), together[::-1])
    assert len({v.tobytes() for v in together}) == len(patches)


def test_same_vector_in_another_process(patches):
    code = (
        "import sys, numpy as np; from clanet_store.models.classic import describe; "
        "p = np.frombuffer(sys.stdin.buffer.read(), np.uint8).reshape(-1, 112, 112); "
        "sys.stdout.write(describe(p, 1).tobytes().hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=patches.tobytes(), capture_output=True, check=True
    )
    assert bytes.fromhex(out.stdout.decode()) == describe(patches).tobytes()


def test_blind_to_brightness_and_contrast(patches):
    base = patches // 4 * 2  # even levels up to 126: both maps below are exact and fit in uint8
    brighter = base + 40
    stretched = base // 2 * 3 + 5  # 1.5 x base + 5
    reference = describe(base)
    np.testing.assert_allclose(describe(brighter), reference, rtol=0, atol=1e-9)
    np.testing.assert_allclose(describe(stretched), reference, rtol=0, atol=1e-9)


def test_finite_on_flat_and_extreme_patches(encoder):
    flat = np.stack([np.full((112, 112), v, np.uint8) for v in (0, 128, 255)])
    dot = np.zeros((1, 112, 112), np.uint8)
    dot[0, 50, 60] = 255
    vectors_ = encoder.embed(np.concatenate([flat, dot]))
    assert np.isfinite(vectors_).all()
    assert np.abs(vectors_).max() <= classic.CLIP
    np.testing.assert_array_equal(vectors_[0], vectors_[1])  # a flat patch is a flat patch


def test_model_id_names_version_and_statistics(encoder, monkeypatch):
    config = encoder.config
    same = ClassicEncoder(ClassicConfig.from_dict(json.loads(json.dumps(config.as_dict()))))
    assert same.model_id == encoder.model_id
    other_stats = ClassicConfig((config.mean[0] + 1e-9, *config.mean[1:]), config.std, 6)
    assert ClassicEncoder(other_stats).model_id != encoder.model_id
    recorded = config.as_dict()
    monkeypatch.setattr(classic, "CLASSIC_VERSION", classic.CLASSIC_VERSION + 1)
    bumped = ClassicConfig(config.mean, config.std, config.fit_patches, version=2)
    assert ClassicEncoder(bumped).model_id != encoder.model_id
    with pytest.raises(ValueError, match="re-encode with --encoder classic"):
        ClassicConfig.from_dict(recorded)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """24 synthetic images: 2 lines x 2 batches x 2 positions x 3 time points, ingested."""
    root = tmp_path_factory.mktemp("classic")
    synth_export(root / "export", lines=2, batches=2, positions=2, timepoints=3, seed=0)
    ingest(root / "export", root / "store", workers=1)
    return root / "store"


def test_store_workflow_with_a_classic_encoder(store_path, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(store_path, store)
    s = str(store)
    r = _ok(["encode", "--store", s, "--encoder", "classic"])
    n = EmbeddingStore(store).query("patches").to_polars().height
    assert (r["arch"], r["embedding_dim"], r["table"]) == ("classic", N_FEATURES, "embeddings_89")
    assert r["patches_encoded"] == n and not r["random_init"]
    again = _ok(["encode", "--store", s, "--encoder", "classic"])
    assert again["model_id"] == r["model_id"] and again["patches_encoded"] == 0

    es = EmbeddingStore(store)
    row = es.encoder(r["model_id"])
    assert row.arch == "classic" and json.loads(row.config)["fit_patches"] == n
    rebuilt = encoder_for_model(row, None)
    table = es.query("embeddings", r["model_id"]).to_arrow()
    ids = table.column("patch_id").to_pylist()
    some = [ids[-1], ids[0], ids[len(ids) // 2]]  # each alone, in another order than stored
    expected = vectors(table)[[len(ids) - 1, 0, len(ids) // 2]]
    for patch_id, vector in zip(some, expected, strict=True):
        np.testing.assert_array_equal(
            rebuilt.embed(es.patch_store.pixels([patch_id])), vector[None]
        )

    found = _ok(["search", "--store", s, "--patch-id", ids[0], "-k", "3", "--other-batches"])
    assert len(found["results"]) == 3
    image = es.query("images").to_polars()["path"][0]
    found = _ok(["search", "--store", s, "--image", str(store_path.parent / "export" / image)])
    assert min(row["distance"] for row in found["results"]) < 1e-6  # its own patches

    model = tmp_path / "m.pt"
    split = ["--split", "batch-stratified", "--repeat", "1"]
    t = _ok(["train", "--store", s, *split, "--epochs", "2", "--out", str(model)])
    assert t["encoder_model_id"] == r["model_id"] and t["encoder_arch"] == "classic"
    e = _ok(["evaluate", "--store", s, "--model", str(model)])
    assert 0 <= e["sequence_accuracy"] <= 1
    p = _ok(["predict", "--store", s, "--model", str(model), "--where", "rank<3"])
    assert p["sequences"]


def test_predict_a_new_export_with_the_recorded_statistics(store_path, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(store_path, store)
    first = classic_encoder(store)
    _ok(["encode", "--store", str(store), "--encoder", "classic"])
    model = tmp_path / "m.pt"
    split = ["--split", "batch-stratified", "--repeat", "1", "--epochs", "1"]
    _ok(["train", "--store", str(store), *split, "--out", str(model)])
    export = tmp_path / "new"
    synth_export(export, lines=1, batches=1, positions=1, timepoints=1, seed=5)
    predict = ["predict", "--store", str(store), "--model", str(model), "--workers", "1"]
    p = _ok([*predict, "--export", str(export)])
    assert p["encode"]["model_id"] == first.model_id and p["encode"]["patches_encoded"] > 0
    assert classic_encoder(store).model_id == first.model_id  # statistics stay frozen


def test_the_fit_sample_is_whole_images_drawn_until_it_holds_enough(store_path, monkeypatch):
    store = EmbeddingStore(store_path)
    patches = store.query("patches").select("image_id", "row").to_polars()
    assert set(classic_fit_rows(store)) == set(patches["row"])  # a small store: all of it
    monkeypatch.setattr(encode_module, "FIT_PATCHES", 50)
    rows = classic_fit_rows(store)
    assert np.array_equal(rows, classic_fit_rows(store))  # the same draw again
    drawn = patches.filter(pl.col("row").is_in(rows.tolist()))
    whole = patches.filter(pl.col("image_id").is_in(drawn["image_id"].unique().implode()))
    assert drawn.height == whole.height  # every drawn image with all its patches
    largest = drawn.group_by("image_id").len()["len"].max()
    assert drawn.height >= 50 > drawn.height - largest  # no more images than it needs
    assert drawn["image_id"].n_unique() < patches["image_id"].n_unique()


def test_classic_refuses_vit_options(store_path):
    result = CliRunner().invoke(
        main, ["encode", "--store", str(store_path), "--encoder", "classic", "--arch", "x"]
    )
    assert result.exit_code == 2 and "--arch: only for --encoder vit" in result.output


def test_sigkill_midrun_then_rerun_gives_one_row_per_patch(store_path, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    cmd = [str(BIN / "clanet-store"), "encode", "--store", str(path), "--encoder", "classic"]
    cmd += ["--batch-size", "2", "--commit-every", "2"]
    model_id, report = kill_and_resume(cmd, path, "embeddings_89", pl.col("arch") == "classic")
    assert report["model_id"] == model_id and report["arch"] == "classic"
