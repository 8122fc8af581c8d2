"""encode on a real Dask cluster (a ``dask scheduler`` and two ``dask worker`` processes started
here): the same rows and vectors as an encode in one process, for the classic descriptor and a
ViT; a re-run adds nothing; a driver killed mid-run resumes exactly; a cuda encode on workers
without a GPU, or a bad scheduler address, fails in one line."""

import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import timm
import torch
from test_encode import SEED7, kill_and_resume

from clanet_store.errors import ClanetError
from clanet_store.pipelines.encode import classic_encoder, encode, load_encoder
from clanet_store.pipelines.encode_workers import Cluster
from clanet_store.stores.embedding_store import EmbeddingStore
from clanet_store.stores.query import vectors

ARCH = "vit_tiny_patch16_224"
BIN = Path(sys.executable).parent


def stored_rows(path: Path, model_id: str) -> tuple[list[str], np.ndarray]:
    table = EmbeddingStore(path).query("embeddings", model_id).to_arrow().sort_by("patch_id")
    return table.column("patch_id").to_pylist(), vectors(table)


def tiny_vit(tmp_path: Path):
    torch.manual_seed(5)
    model = timm.create_model(ARCH, pretrained=False, img_size=112, num_classes=0)
    weights = tmp_path / "vit.pth"
    torch.save(model.state_dict(), weights)
    return load_encoder(weights, ARCH, "cpu")


@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["classic", "vit"])
def test_cluster_encode_equals_single_process(two_image_store, scheduler, tmp_path, kind):
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(two_image_store, here)
    shutil.copytree(two_image_store, there)
    encoder = classic_encoder(here) if kind == "classic" else tiny_vit(tmp_path)
    local = encode(here, encoder, batch_size=8)
    remote = encode(
        there, encoder, batch_size=8, commit_every=16, cluster=Cluster(scheduler=scheduler)
    )
    assert (remote.workers, local.workers) == (2, 0)
    assert remote.device == "2 dask workers (cpu)"
    assert remote.model_id == local.model_id
    assert (
        remote.patches_encoded
        == local.patches_encoded
        == EmbeddingStore(here).query("patches").to_polars().height
    )
    ids_here, got_here = stored_rows(here, local.model_id)
    ids_there, got_there = stored_rows(there, local.model_id)
    assert ids_there == ids_here and len(set(ids_there)) == len(ids_there)
    np.testing.assert_allclose(got_there, got_here, atol=1e-6, rtol=0)
    again = encode(there, encoder, batch_size=8, cluster=Cluster(scheduler=scheduler))
    assert (again.patches_encoded, again.patches_skipped) == (0, local.patches_encoded)


@pytest.mark.realdata
def test_cuda_on_workers_without_gpu_fails_in_one_line(two_image_store, scheduler, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(two_image_store, path)
    cluster = Cluster(scheduler=scheduler, device="cuda")
    with pytest.raises(ClanetError, match="no dask worker holds the resource GPU") as info:
        encode(path, tiny_vit(tmp_path), cluster=cluster)
    assert "\n" not in str(info.value)
    assert EmbeddingStore(path).encoders() == ()  # nothing written


@pytest.mark.realdata
def test_sigkill_of_the_driver_then_rerun_gives_one_row_per_patch(
    two_image_store, scheduler, tmp_path
):
    path = tmp_path / "store"
    shutil.copytree(two_image_store, path)
    cmd = [str(BIN / "clanet-store"), "encode", "--store", str(path), "--scheduler", scheduler]
    cmd += ["--arch", "vit_small_patch8_224", "--batch-size", "4", "--commit-every", "4"]
    cmd += ["--seed", "7"]
    model_id, report = kill_and_resume(cmd, path, "embeddings", pl.col("weights_source") == SEED7)
    assert report["model_id"] == model_id and report["workers"] == 2


@pytest.mark.realdata
def test_a_bad_scheduler_address_fails_in_one_line(two_image_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(two_image_store, path)
    with pytest.raises(ClanetError, match=r"^nonsense: no Dask scheduler reachable") as info:
        encode(path, tiny_vit(tmp_path), cluster=Cluster(scheduler="nonsense"))
    assert "\n" not in str(info.value)
    assert EmbeddingStore(path).encoders() == ()
