"""DINOv2's collapse guards as options of a DINO recipe (issue 18): Sinkhorn-Knopp teacher
targets (equipartition over the head's outputs) and the KoLeo regulariser (spread class tokens),
through the loss, one training step and ``ssl-train --centering / --koleo``; off by default."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import clanet_store.pipelines.ssl_train as ssl_module
from clanet_store.cli import main
from clanet_store.models import dino
from clanet_store.models.dino_regularisers import koleo_loss, sinkhorn_knopp
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.ssl_train import recipe_with
from clanet_store.torchfile import load_torch_file

TINY = "vit_tiny_patch16_224"


def logits(batch: int, outputs: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, outputs, generator=torch.Generator().manual_seed(seed))


def dinov2_sinkhorn(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINOv2's SinkhornKnoppTeacher written out (K x B, 3 iterations, one process)."""
    q = torch.exp(x / temperature).t()
    outputs, batch = q.shape
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(dim=1, keepdim=True)
        q /= outputs
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).t()


@pytest.mark.parametrize(("batch", "outputs"), [(64, 16), (32, 256)])
def test_sinkhorn_rows_are_distributions_and_columns_share_the_batch(
    batch: int, outputs: int
) -> None:
    """Rows sum to 1; columns to batch / K (equipartition): exactly in the limit, closer after
    DINOv2's 3 iterations than a plain softmax of the same logits."""
    x = logits(batch, outputs)
    share = batch / outputs
    q = sinkhorn_knopp(x, temperature=0.5)
    torch.testing.assert_close(q, dinov2_sinkhorn(x.double(), 0.5).float())
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch))
    assert (q >= 0).all()
    softmax_gap = (F.softmax(x / 0.5, dim=1).sum(dim=0) - share).abs().max()
    assert (q.sum(dim=0) - share).abs().max() < 0.5 * softmax_gap
    converged = sinkhorn_knopp(x, temperature=0.5, iterations=200)
    torch.testing.assert_close(
        converged.sum(dim=0), torch.full((outputs,), share), rtol=1e-3, atol=0
    )
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(batch))


def test_sinkhorn_survives_a_sharp_temperature() -> None:
    q = sinkhorn_knopp(100 * logits(16, 8), temperature=0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))


def test_sinkhorn_cannot_send_every_patch_to_one_output() -> None:
    """Every patch prefers output 0 (DINO's collapse without centring); the Sinkhorn targets
    still spread the batch's mass over the outputs."""
    x = torch.zeros(32, 8)
    x[:, 0] = 1.0
    x += 0.01 * logits(32, 8)
    q = sinkhorn_knopp(x, temperature=0.1)
    assert F.softmax(x / 0.1, dim=1)[:, 0].mean() > 0.9
    assert q[:, 0].mean() < 0.3


def test_koleo_is_lower_for_spread_features_than_for_clustered_ones() -> None:
    spread = logits(64, 32)
    clustered = logits(1, 32) + 0.01 * logits(64, 32, seed=1)  # one direction, a little noise
    assert koleo_loss(spread) < koleo_loss(clustered)
    # DINOv2's definition: minus the mean log distance to the nearest other row, on the sphere
    x = F.normalize(spread, dim=1)
    distances = torch.cdist(x, x) + torch.eye(64) * 10
    expected = -torch.log(distances.min(dim=1).values).mean()
    torch.testing.assert_close(koleo_loss(spread), expected, rtol=1e-4, atol=1e-6)


def test_koleo_gradient_pushes_nearest_neighbours_apart() -> None:
    features = logits(16, 8).requires_grad_(True)
    loss = koleo_loss(features)
    loss.backward()
    with torch.no_grad():
        moved = features - 0.01 * features.grad
    assert koleo_loss(moved) < loss


def test_loss_with_sinkhorn_centering_uses_the_sinkhorn_targets() -> None:
    teacher = logits(6, 5)
    student = logits(3 * 6, 5, seed=1)
    loss_fn = dino.DinoLoss(5, student_temp=0.1, center_momentum=0.9, centering="sinkhorn")
    loss_fn.center.fill_(3.0)  # kept, unused
    q = sinkhorn_knopp(teacher, 0.04).chunk(2)
    log_p = F.log_softmax(student / 0.1, dim=-1).chunk(6)
    terms = [-(q[t] * log_p[s]).sum(-1).mean() for t in range(2) for s in range(6) if s != t]
    torch.testing.assert_close(loss_fn(student, teacher, 0.04), torch.stack(terms).mean())
    with pytest.raises(ValueError, match="centering 'mean'"):
        dino.DinoLoss(5, 0.1, 0.9, centering="mean")


def test_guards_are_off_in_both_recipes_and_named_by_recipe_with() -> None:
    for recipe in (dino.FINETUNE, dino.SCRATCH):
        assert (recipe.centering, recipe.sinkhorn_iterations, recipe.koleo_weight) == (
            "center",
            3,
            0.0,
        )
    assert dino.build_loss(dino.SCRATCH.sized_for(432)).centering == "center"
    assert recipe_with(None, None, {}) is None
    chosen = recipe_with(None, None, {"centering": "sinkhorn", "koleo_weight": 0.1})
    assert chosen == dataclasses.replace(dino.SCRATCH, centering="sinkhorn", koleo_weight=0.1)
    assert recipe_with(None, "init.pth", {"koleo_weight": 0.5}).base_lr == dino.FINETUNE.base_lr


def test_train_step_adds_the_weighted_koleo_of_each_global_view() -> None:
    config = dino.DinoConfig(
        out_dim=32, hidden_dim=32, bottleneck_dim=16, n_local=2, drop_path=0.0, koleo_weight=0.3
    )
    student, teacher = dino.build_dino(TINY, 112, config, seed=1)
    loss_fn, optimizer = dino.build_loss(config), dino.build_optimizer(student)
    torch.manual_seed(0)
    views = dino.MultiCrop(config).batch(torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8))
    values = dino.schedule_at(config, 3, step=0, steps_per_epoch=10, epochs=1)
    with torch.no_grad():
        tokens = student.class_tokens(views)
        dino_loss = loss_fn(student.head(tokens), teacher(views[:2]), values.teacher_temp)
        koleo = koleo_loss(tokens[:3]) + koleo_loss(tokens[3:6])
    loss = dino.train_step(student, teacher, loss_fn, optimizer, views, values, False, 0.0, 0.3)
    assert loss == pytest.approx(float(dino_loss + 0.3 * koleo), rel=1e-5)


@pytest.mark.realdata
def test_cli_records_the_guards(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--centering sinkhorn --koleo 0.1 --local-crops 2`` go into the run's numbers, its JSON
    summary and the checkpoint (``recipe`` and ``config.dino``)."""
    source = sorted((shared_data / "azgcb_sample" / "BT474").iterdir())[0]
    (tmp_path / "export" / "BT474").mkdir(parents=True)
    shutil.copy(source, tmp_path / "export" / "BT474" / source.name)
    ingest(tmp_path / "export", tmp_path / "store", workers=1)
    monkeypatch.setattr(ssl_module, "default_workers", lambda: 0)
    # a random init breaks the spread rule: this test is about what is recorded
    monkeypatch.setattr(ssl_module, "collapse_reasons", lambda probe, config: ())
    out = tmp_path / "ssl.pt"
    args = ["ssl-train", "--store", str(tmp_path / "store"), "--out", str(out), "--arch", TINY]
    args += ["--epochs", "1", "--batch-size", "4", "--k", "4", "--format", "json"]
    guards = ["--centering", "sinkhorn", "--koleo", "0.1", "--local-crops", "2"]
    result = CliRunner().invoke(main, [*args, *guards])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["recipe"] == "scratch"
    numbers = summary["dino"]
    assert (numbers["centering"], numbers["koleo_weight"], numbers["n_local"]) == (
        "sinkhorn",
        0.1,
        2,
    )
    ckpt = load_torch_file(out, "an ssl-train checkpoint")
    assert ckpt["recipe"]["centering"] == "sinkhorn" and ckpt["recipe"]["koleo_weight"] == 0.1
    assert ckpt["config"]["dino"]["centering"] == "sinkhorn"
    again = CliRunner().invoke(main, [*args[:-2], "--resume", "--koleo", "0.2"])
    assert again.exit_code != 0 and "cannot resume with other settings" in again.output
