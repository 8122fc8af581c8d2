"""encode on a real store: stored vectors equal a direct timm computation, checkpoint formats
share one path and one model_id, re-runs add nothing, and a SIGKILLed run resumes exactly;
reads in whole image slots (Zarr chunks), and a table is compacted only when it has something
to compact."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import timm
import torch
from lancedb.expr import col
from test_encoder import reference_features

from clanet_store.pipelines.encode import encode, load_encoder
from clanet_store.pipelines.ingest import ingest
from clanet_store.stores import lance
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.patch_store import SLOT_SIZE, slot_batches
from clanet_store.stores.query import vectors

BIN = Path(sys.executable).parent


@pytest.mark.realdata
def test_stored_embedding_equals_direct_forward_intermediates(two_image_store, tmp_path):
    model = timm.create_model("vit_small_patch8_224", pretrained=False, img_size=112, num_classes=0)
    weights = tmp_path / "vits8.pth"
    torch.save(model.state_dict(), weights)
    encoder = load_encoder(weights, None, "cpu")
    report = encode(two_image_store, encoder, batch_size=16)
    store = EmbeddingStore(two_image_store)
    n_patches = store.query("patches").to_polars().height
    assert report.patches_encoded == n_patches > 0
    assert (report.embedding_dim, report.table, report.random_init) == (1536, "embeddings", False)
    table = store.query("embeddings", report.model_id).to_arrow()
    assert table.num_rows == n_patches
    got = vectors(table)
    assert got.shape == (n_patches, 1536)
    ids = table.column("patch_id").to_pylist()[:5]
    pixels = store.patch_store.pixels(ids)
    expected = reference_features(model.eval(), torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(got[:5], expected, atol=1e-5, rtol=0)
    again = encode(two_image_store, encoder, batch_size=16)
    assert (again.patches_encoded, again.patches_skipped) == (0, n_patches)


@pytest.mark.realdata
def test_dino_and_timm_checkpoints_share_model_id_and_rows(two_image_store, tmp_path):
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    timm_file = tmp_path / "timm.pth"
    torch.save(model.state_dict(), timm_file)  # 224 px: pos_embed resized to 112 px on load
    dino_file = tmp_path / "dino.pth"
    state = {f"module.backbone.{k}": v for k, v in model.state_dict().items()}
    head = {"module.head.last_layer.weight": torch.zeros(8, 192)}
    torch.save({"teacher": {**state, **head}, "student": {}, "epoch": 3}, dino_file)
    first = encode(two_image_store, load_encoder(timm_file, "vit_tiny_patch16_224", "cpu"), 32)
    second = encode(two_image_store, load_encoder(dino_file, "vit_tiny_patch16_224", "cpu"), 32)
    assert first.model_id == second.model_id
    assert (first.table, first.embedding_dim) == ("embeddings_768", 768)
    assert second.patches_encoded == 0 and second.patches_skipped == first.patches_encoded
    models = EmbeddingStore(two_image_store).encoders()
    assert [m.weights_format for m in models if m.model_id == first.model_id] == ["timm"]


SEED7 = "random-init(seed=7)"


def kill_and_resume(cmd: list[str], path: Path, table: str, model: pl.Expr) -> tuple[str, dict]:
    """Start ``encode`` (``cmd``), SIGKILL it once ``table`` holds rows of the model that the
    models-table filter ``model`` selects, then re-run it to the end: the re-run encodes exactly
    the rest and leaves one row per patch. Returns the killed run's model_id and the re-run's
    JSON report."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "encode finished before it could be killed"
            assert time.monotonic() < deadline, "encode committed nothing in time"
            try:
                store = EmbeddingStore(path)
                found = pl.DataFrame([e.as_dict() for e in store.encoders()]).filter(model)
                mine = col("model_id") == found["model_id"][0] if found.height else None
                if mine is not None and store.table(table).count_rows(mine.to_sql()):
                    break
            except Exception:  # tables not created yet
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    model_id = found["model_id"][0]
    partial = EmbeddingStore(path).query("embeddings", model_id).select("patch_id").to_polars()
    n = EmbeddingStore(path).query("patches").to_polars().height
    assert 0 < partial.height < n
    res = subprocess.run([*cmd, "--format", "json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["patches_encoded"] == n - partial.height
    rows = (
        EmbeddingStore(path).query("embeddings", report["model_id"]).select("patch_id").to_polars()
    )
    assert rows.height == n and rows["patch_id"].n_unique() == n
    return model_id, report


@pytest.mark.realdata
def test_sigkill_midrun_then_rerun_gives_one_row_per_patch(two_image_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(two_image_store, path)
    cmd = [str(BIN / "clanet-store"), "encode", "--store", str(path), "--arch"]
    cmd += ["vit_small_patch8_224", "--batch-size", "4", "--commit-every", "4", "--seed", "7"]
    model_id, report = kill_and_resume(cmd, path, "embeddings", pl.col("weights_source") == SEED7)
    assert report["random_init"] is True and report["model_id"] == model_id


@pytest.mark.realdata
def test_embeddings_of_replaced_patches_are_removed(tmp_path, shared_data):
    root = tmp_path / "export" / "A431"
    root.mkdir(parents=True)
    target = root / "A431_B1_1_00d00h00m.jpg"
    shutil.copy(shared_data / "azgcb_sample" / "A431" / target.name, target)
    store = tmp_path / "store"
    ingest(root.parent, store, workers=1)
    encoder = load_encoder(None, "vit_tiny_patch16_224", "cpu")
    first = encode(store, encoder, batch_size=32)
    target.write_bytes(
        (shared_data / "azgcb_sample" / "A431" / "A431_C6_1_04d00h00m.jpg").read_bytes()
    )
    assert ingest(root.parent, store, workers=1).images_replaced == 1
    # ingest removed the replaced patches' embeddings before committing the new images row
    assert (
        EmbeddingStore(store).query("embeddings").select("patch_id").to_polars().height
        == 0
        < first.patches_encoded
    )
    second = encode(store, encoder, batch_size=32)
    assert second.stale_removed == 0 and second.patches_encoded > 0
    es = EmbeddingStore(store)
    rows = es.query("embeddings").select("patch_id").to_polars()
    assert sorted(rows["patch_id"]) == sorted(es.query("patches").to_polars()["patch_id"])


def test_batches_cover_the_rows_in_order_and_never_split_a_slot():
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(50 * SLOT_SIZE, 600, replace=False))
    for batch_size in (1, 7, 64, 1000):
        batches = slot_batches(rows, batch_size)
        assert np.array_equal(np.concatenate(batches), rows)
        slots = [set((b // SLOT_SIZE).tolist()) for b in batches]
        assert all(not (a & b) for i, a in enumerate(slots) for b in slots[i + 1 :])
        assert all(len(b) >= batch_size for b in batches[:-1])
        assert all(len(b) < batch_size + SLOT_SIZE for b in batches)  # a slot more at most
    assert slot_batches(np.array([], np.int64), 64) == []


def test_compact_runs_only_on_more_than_one_fragment_or_deleted_rows(tmp_path):
    table = lancedb.connect(tmp_path).create_table("t", pa.table({"a": [1, 2, 3]}))
    version = table.version
    assert not lance.compact(table)  # one fragment: nothing to merge
    assert table.version == version  # and nothing written
    table.add(pa.table({"a": [4]}))
    assert lance.compact(table)
    assert table.stats()["fragment_stats"]["num_fragments"] == 1
    table.delete("a = 2")
    assert lance.compact(table, deleted=True)
    assert sorted(table.to_arrow()["a"].to_pylist()) == [1, 3, 4]
