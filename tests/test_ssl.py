"""DINO training (SPEC 5): loss, centre, schedules, EMA, multi-crop, the loader's batches, and
`ssl_train` / ``ssl-train`` on real patches: the loss falls, the checkpoint feeds the encoder, a
resumed run matches an uninterrupted one; the two recipes (finetune = SPEC 5, scratch = DINO's
from-scratch settings) and the collapse probe that stops a collapsed run."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from torchvision.transforms import InterpolationMode

import clanet_store.pipelines.ssl_train as ssl_module
from clanet_store.cli import main
from clanet_store.errors import ClanetError
from clanet_store.models.dino import (
    FINETUNE,
    SCRATCH,
    DinoConfig,
    DinoLoss,
    MultiCrop,
    build_dino,
    build_loss,
    build_optimizer,
    clip_gradients,
    collapse_reasons,
    cosine,
    ema_update,
    head_out_dim,
    probe_teacher,
    schedule_at,
    train_step,
)
from clanet_store.models.encoder import EncoderConfig, build_encoder
from clanet_store.models.health import embedding_health
from clanet_store.pipelines.ingest import ingest
from clanet_store.pipelines.ssl_report import SSLReport
from clanet_store.pipelines.ssl_train import (
    EpochBatches,
    PatchViews,
    TrainingCollapsed,
    TrainProgress,
    ssl_train,
)
from clanet_store.stores.patch_store import PatchStore

TINY = "vit_tiny_patch16_224"
# SPEC 5 except a small head, and a learning rate for batches of 4 rather than 256.
SMALL = DinoConfig(out_dim=256, hidden_dim=256, bottleneck_dim=64, base_lr=0.05)
LINE = "BT474"  # one real image: 20 stored patches
# The collapse rules switched off: for runs from a random init that check other things.
NO_RULES = {"collapse_uniform": 2.0, "collapse_one_hot": -1.0, "collapse_spread": -1.0}
RUN = {  # 12 patches, 3 steps per epoch
    "epochs": 2,
    "batch_size": 4,
    "arch": TINY,
    "k": 12,
    "recipe": "finetune",
    "dino": dataclasses.replace(SMALL, **NO_RULES),
}


def random_patches(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 112, 112), dtype=torch.uint8, generator=generator)


# --- loss, centre, schedules, EMA -------------------------------------------------------------


def spec_loss(student: np.ndarray, teacher: np.ndarray, center: np.ndarray, n_views: int) -> float:
    """SPEC 5 written out with math: every (teacher global view, other student view) pair."""
    batch = teacher.shape[0] // 2

    def softmax(logits: np.ndarray) -> list[float]:
        exps = [math.exp(x - max(logits)) for x in logits]
        return [e / sum(exps) for e in exps]

    terms = []
    for t in range(2):
        for s in range(n_views):
            if s == t:
                continue
            per_patch = []
            for b in range(batch):
                q = softmax((teacher[t * batch + b] - center) / 0.04)
                p = softmax(student[s * batch + b] / 0.1)
                per_patch.append(-sum(qk * math.log(pk) for qk, pk in zip(q, p, strict=True)))
            terms.append(sum(per_patch) / batch)
    return sum(terms) / len(terms)


def test_loss_equals_spec_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    n_views, batch, dim = 5, 3, 7
    student = torch.randn(n_views * batch, dim, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2 * batch, dim, generator=generator, dtype=torch.float64)
    loss_fn = DinoLoss(dim, student_temp=0.1, center_momentum=0.9).double()
    loss_fn.center.copy_(0.3 * torch.randn(1, dim, generator=generator, dtype=torch.float64))
    expected = spec_loss(student.numpy(), teacher.numpy(), loss_fn.center[0].numpy(), n_views)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss = loss_fn(student, teacher, 0.04)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert teacher.grad is None and student.grad is not None  # no gradient through the teacher


def test_loss_uses_spec_numbers() -> None:
    loss_fn = build_loss(DinoConfig())
    assert loss_fn.student_temp == 0.1 and loss_fn.center_momentum == 0.9
    assert loss_fn.center.shape == (1, 65536) and not loss_fn.center.any()


def test_center_moves_with_momentum() -> None:
    loss_fn = DinoLoss(4, 0.1, center_momentum=0.9)
    first = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    loss_fn.update_center(first)
    torch.testing.assert_close(loss_fn.center, 0.1 * torch.tensor([[2.0, 2.0, 2.0, 2.0]]))
    second = torch.tensor([[10.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 4.0]])
    loss_fn.update_center(second)
    expected = 0.9 * 0.1 * torch.full((1, 4), 2.0) + 0.1 * torch.tensor([[10.0, 0.0, 0.0, 2.0]])
    torch.testing.assert_close(loss_fn.center, expected)


def test_schedules_are_spec_cosines() -> None:
    config, batch, total = DinoConfig(), 512, 1000
    start, end = (schedule_at(config, batch, step, total, 1) for step in (0, total))
    assert start.lr == pytest.approx(5e-5 * 512 / 256) and end.lr == pytest.approx(1e-6)
    assert (start.weight_decay, end.weight_decay) == (pytest.approx(0.04), pytest.approx(0.4))
    assert (start.momentum, end.momentum) == (pytest.approx(0.996), pytest.approx(1.0))
    middle = schedule_at(config, batch, total // 2, total, 1)
    assert middle.lr == pytest.approx((start.lr + end.lr) / 2)
    assert middle.momentum == pytest.approx(0.998)
    quarter = schedule_at(config, batch, total // 4, total, 1)
    assert quarter.weight_decay == pytest.approx(
        0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi / 4)) / 2
    )
    lrs = [schedule_at(config, batch, step, total, 1).lr for step in range(0, total + 1, 50)]
    assert lrs == sorted(lrs, reverse=True)
    temps = {schedule_at(config, batch, step, total, 1).teacher_temp for step in range(total)}
    assert temps == {0.04}  # SPEC 5: no teacher temperature warm-up


def test_ema_update_is_the_momentum_average() -> None:
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.99)
    for new, old, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * s)


@pytest.mark.parametrize("freeze", [True, False])
def test_train_step_follows_the_schedules(freeze: bool) -> None:
    """lr / weight decay set from the schedule, teacher = EMA of the updated student, centre moved,
    the last layer untouched while frozen."""
    config = DinoConfig(out_dim=32, hidden_dim=32, bottleneck_dim=16, n_local=2, base_lr=1.0)
    student, teacher = build_dino(TINY, 112, config, seed=1)
    loss_fn, optimizer = build_loss(config), build_optimizer(student)
    torch.manual_seed(0)
    views = MultiCrop(config).batch(random_patches(2))
    values = schedule_at(config, 2, step=3, steps_per_epoch=10, epochs=1)
    teacher_before = [p.clone() for p in teacher.parameters()]
    last_before = student.head.last_layer.weight.clone()
    with torch.no_grad():
        teacher_out = teacher(views[:2])
    train_step(student, teacher, loss_fn, optimizer, views, values, freeze_last_layer=freeze)
    assert [g["lr"] for g in optimizer.param_groups] == [values.lr, values.lr]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [values.weight_decay, 0.0]
    m = values.momentum
    for new, old, s in zip(teacher.parameters(), teacher_before, student.parameters(), strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * s.detach())
    torch.testing.assert_close(loss_fn.center, 0.1 * teacher_out.mean(dim=0, keepdim=True))
    assert torch.equal(student.head.last_layer.weight, last_before) == freeze


# --- the two recipes --------------------------------------------------------------------------


def test_finetune_recipe_keeps_spec_5_numbers() -> None:
    assert DinoConfig() == FINETUNE
    assert (FINETUNE.out_dim, FINETUNE.norm_last_layer, FINETUNE.freeze_last_layer_epochs) == (
        65536,
        False,
        1,
    )
    assert (FINETUNE.base_lr, FINETUNE.warmup_epochs, FINETUNE.min_lr) == (5e-5, 0, 1e-6)
    assert (FINETUNE.teacher_temp, FINETUNE.teacher_temp_end, FINETUNE.student_temp) == (
        0.04,
        0.04,
        0.1,
    )
    assert (FINETUNE.weight_decay_start, FINETUNE.weight_decay_end) == (0.04, 0.4)
    assert (FINETUNE.momentum_start, FINETUNE.momentum_end, FINETUNE.clip_grad) == (0.996, 1, 0)
    assert (FINETUNE.n_local, FINETUNE.drop_path, FINETUNE.center_momentum) == (8, 0.1, 0.9)


def test_scratch_recipe_is_dinos_from_scratch_settings() -> None:
    assert (SCRATCH.base_lr, SCRATCH.warmup_epochs, SCRATCH.min_lr) == (5e-4, 10, 1e-6)
    assert (SCRATCH.teacher_temp, SCRATCH.teacher_temp_end) == (0.04, 0.07)
    assert SCRATCH.teacher_temp_warmup_epochs == 30 and SCRATCH.clip_grad == 3.0
    assert SCRATCH.norm_last_layer and SCRATCH.freeze_last_layer_epochs == 1
    assert SCRATCH.out_dim == 0  # sized for the data
    # the rest is SPEC 5's
    same = {"n_local", "global_scale", "local_scale", "weight_decay_end", "momentum_start"}
    assert all(getattr(SCRATCH, name) == getattr(FINETUNE, name) for name in same)


def test_head_is_sized_for_the_data() -> None:
    """One output per 20 training patches, a power of two in [256, 65536]."""
    assert head_out_dim(SCRATCH, 432) == 256  # the demo: 22 wanted, the floor
    assert head_out_dim(SCRATCH, 100_000) == 4096  # 5000 -> the nearest power of two
    assert head_out_dim(SCRATCH, 1_281_167) == 65536  # ImageNet: DINO's head
    assert head_out_dim(SCRATCH, 10**9) == 65536
    assert SCRATCH.sized_for(100_000).out_dim == 4096
    assert FINETUNE.sized_for(100) is FINETUNE  # a set out_dim stays


def test_scratch_schedules_warm_up_then_follow_cosines() -> None:
    """20 epochs of 10 steps: DINO's 10 / 30 warm-up epochs of 100 shrink to 2 / 6 epochs."""
    batch, spe, epochs = 64, 10, 20
    values = [schedule_at(SCRATCH, batch, step, spe, epochs) for step in range(spe * epochs)]
    peak = 5e-4 * 64 / 256
    lrs = [v.lr for v in values]
    assert lrs[:20] == pytest.approx([peak * (i + 1) / 20 for i in range(20)])  # linear warm-up
    assert lrs[20] == pytest.approx(peak)
    assert lrs[20:] == pytest.approx([cosine(peak, 1e-6, i, 180) for i in range(180)])
    temps = [v.teacher_temp for v in values]
    assert temps[:61] == pytest.approx([0.04 + 0.03 * min(i, 60) / 60 for i in range(61)])
    assert temps[60:] == pytest.approx([0.07] * 140)
    assert [v.weight_decay for v in values] == pytest.approx(
        [cosine(0.04, 0.4, i, 200) for i in range(200)]
    )
    assert [v.momentum for v in values] == pytest.approx(
        [cosine(0.996, 1.0, i, 200) for i in range(200)]
    )
    # A run as long as DINO's keeps its 10 and 30 epochs.
    long = [schedule_at(SCRATCH, batch, step, 2, 300) for step in (19, 20, 59, 60)]
    assert long[0].lr == pytest.approx(peak) and long[1].lr == pytest.approx(peak)
    assert long[2].teacher_temp < 0.07 and long[3].teacher_temp == pytest.approx(0.07)


def test_clip_gradients_per_parameter_tensor() -> None:
    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.full((2, 2), 3.0)  # norm 6
    layer.bias.grad = torch.tensor([0.3, 0.4])  # norm 0.5
    clip_gradients(layer, 3.0)
    torch.testing.assert_close(layer.weight.grad.norm(), torch.tensor(3.0))
    torch.testing.assert_close(layer.bias.grad, torch.tensor([0.3, 0.4]))  # under the limit


def test_weight_normalised_last_layer_gives_cosines() -> None:
    config = dataclasses.replace(SMALL, norm_last_layer=True)
    student, _ = build_dino(TINY, 112, config, seed=0)
    head = student.head
    x = torch.randn(3, 192)
    before = head(x)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # the row norms do not matter, only directions
    torch.testing.assert_close(head(x), before)
    assert before.abs().max() <= 1 + 1e-6
    plain, _ = build_dino(TINY, 112, SMALL, seed=0)
    with torch.no_grad():
        plain.head.last_layer.weight.mul_(7.0)
    torch.testing.assert_close(plain.head(x), 7 * before)  # SPEC 5: a plain linear layer


def test_collapse_rules() -> None:
    """Each rule fires on its own pattern of values and not on a healthy one."""
    top = math.log(256)

    def probe(entropy: float, mean_entropy: float, spread: float):
        return ssl_module.CollapseProbe(1, entropy, mean_entropy, top, spread)

    assert collapse_reasons(probe(0.5 * top, 0.9 * top, 0.2), SCRATCH) == ()
    (uniform,) = collapse_reasons(probe(0.99 * top, 0.999 * top, 0.2), SCRATCH)
    assert uniform.startswith("uniform teacher: entropy per patch")
    (one_dim,) = collapse_reasons(probe(0.01, 0.05 * top, 0.2), SCRATCH)
    assert one_dim.startswith("one-dimension teacher")
    (flat,) = collapse_reasons(probe(0.5 * top, 0.9 * top, 0.002), SCRATCH)
    assert flat.startswith("no spread: median cosine distance of the features 0.0020 <= 0.01")


# --- multi-crop and the loader's batches ------------------------------------------------------


def test_multicrop_gives_two_global_and_eight_local_views() -> None:
    crop = MultiCrop(DinoConfig())
    patch = random_patches(1)[0]
    views = crop(patch)
    assert [tuple(v.shape) for v in views] == [(1, 112, 112)] * 2 + [(1, 32, 32)] * 8
    assert all(v.dtype == torch.uint8 for v in views)  # no normalisation: still grey pixels
    assert not torch.equal(views[0], views[1])  # two different random crops
    batch = crop.batch(random_patches(3))
    assert [tuple(v.shape) for v in batch] == [(3, 1, 112, 112)] * 2 + [(3, 1, 32, 32)] * 8
    torch.manual_seed(5)
    again = crop(patch)
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(again, crop(patch), strict=True))


def test_multicrop_uses_the_spec_augmentations() -> None:
    crop = MultiCrop(DinoConfig())
    for view, size, scale in (
        (crop.global_view, 112, (0.5, 1.0)),
        (crop.local_view, 32, (0.05, 0.5)),
    ):
        resize, hflip, vflip, maybe_jitter = view.transforms
        assert (resize.size, resize.scale) == ((size, size), scale)
        assert resize.interpolation == InterpolationMode.BICUBIC
        assert (type(hflip).__name__, hflip.p, type(vflip).__name__, vflip.p) == (
            "RandomHorizontalFlip",
            0.3,
            "RandomVerticalFlip",
            0.3,
        )
        (jitter,) = maybe_jitter.transforms
        assert maybe_jitter.p == 0.5 and jitter.brightness == jitter.contrast == (0.5, 1.5)
        assert jitter.saturation is None and jitter.hue is None  # grey: nothing else, no blur


def test_epoch_batches_are_seeded_shuffles() -> None:
    rows = np.arange(100, 123)
    batches = EpochBatches(rows, batch_size=5, seed=0)
    first = list(batches)
    assert len(first) == len(batches) == 4  # 23 // 5, the incomplete batch dropped
    assert all(np.array_equal(b, np.sort(b)) and len(b) == 5 for _, b in first)
    assert len(np.unique(np.concatenate([b for _, b in first]))) == 20
    assert [(s, b.tolist()) for s, b in first] == [(s, b.tolist()) for s, b in batches]
    batches.epoch = 1
    assert [b.tolist() for _, b in batches] != [b.tolist() for _, b in first]


# --- training on real patches ------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of one real image of LINE."""
    root = tmp_path_factory.mktemp("ssl")
    source = sorted((shared_data / "azgcb_sample" / LINE).iterdir())[0]
    (root / "export" / LINE).mkdir(parents=True)
    shutil.copy(source, root / "export" / LINE / source.name)
    ingest(root / "export", root / "store", workers=1)
    return root / "store"


@pytest.fixture(scope="module")
def spread_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm ViT-Ti whose class tokens differ between patches (median cosine distance about
    0.2 on real patches, a random init's 0.002): a random init with its attention sharpened
    (query / key / value weights x 10), standing in for pretrained weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = timm.create_model(TINY, pretrained=False, img_size=112, num_classes=0)
    with torch.no_grad():
        for block in backbone.blocks:
            block.attn.qkv.weight.mul_(10)
    path = tmp_path_factory.mktemp("init") / "spread.pth"
    torch.save(backbone.state_dict(), path)
    return path


@pytest.mark.realdata
def test_probe_reads_the_encoder_feature_and_the_head_input(store: Path, spread_init) -> None:
    """The probe's spread is over what ``encode`` stores; its head input is the backbone's
    forward_features class token."""
    _, teacher = build_dino(TINY, 112, SMALL, init=spread_init, seed=0)
    patches = torch.from_numpy(PatchStore(store).read_rows(np.arange(20)))
    loss_fn = build_loss(SMALL)
    probe = probe_teacher(teacher, loss_fn, patches, 0.04, 4, epoch=0)
    encoder = build_encoder(EncoderConfig(arch=TINY), weights=spread_init)
    with torch.inference_mode():
        features = encoder(patches)
        logits = teacher([patches.unsqueeze(1)])
    health = embedding_health(features.numpy())
    assert probe.cosine_distance_median == health.cosine_distance_median
    q = torch.softmax(logits / 0.04, dim=1)  # the centre is still 0
    per_patch = -(q * q.clamp_min(1e-30).log()).sum(1).mean()
    assert probe.teacher_entropy == pytest.approx(float(per_patch), rel=1e-4)
    assert probe.max_entropy == pytest.approx(math.log(256))
    assert probe.cosine_distance_median > 0.1 and collapse_reasons(probe, SCRATCH) == ()
    random_init = probe_teacher(
        build_dino(TINY, 112, SMALL, seed=0)[1], loss_fn, patches, 0.04, 4, 0
    )
    assert random_init.cosine_distance_median < 0.01  # what the issue measured on ViT-S/8


@pytest.mark.realdata
def test_loader_workers_get_their_own_handle_and_the_same_views(store: Path) -> None:
    """What a spawned / forkserver worker receives (a pickled copy) gives the views the parent
    would, whatever the global RNG: augmentation is seeded per batch."""
    array = PatchStore(store).array
    views = PatchViews(array, MultiCrop(SMALL))
    copy = pickle.loads(pickle.dumps(views))  # as a worker gets it
    item = (123, np.array([2, 5, 11]))
    torch.manual_seed(0)
    expected = views[item]
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(copy[item], expected, strict=True))
    pixels = torch.from_numpy(PatchStore(store).read_rows(item[1]))
    assert len(expected) == 10 and expected[0].shape == (3, 1, 112, 112)
    assert not torch.equal(expected[0][:, 0], pixels)  # augmented, not the raw patches


class Interrupt(Exception):
    """Raised from the progress callback to stop a run as a crash would."""


@pytest.fixture(scope="module")
def reference(store: Path) -> tuple[Path, list[TrainProgress], SSLReport]:
    """An uninterrupted 2-epoch run (loading in-process: a worker's start-up takes seconds)."""
    events: list[TrainProgress] = []
    out = store.parent / "reference.pt"
    summary = ssl_train(store, out, progress=events.append, workers=0, **RUN)
    return out, events, summary


@pytest.mark.realdata
def test_training_on_real_patches_lowers_the_loss(reference) -> None:
    _, events, summary = reference
    losses = [event.loss for event in events]
    assert len(losses) == 6 and summary.patches == 12 and summary.steps_per_epoch == 3
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert summary.losses == pytest.approx([np.mean(losses[:3]), np.mean(losses[3:])])
    assert [e.epoch_loss is not None for e in events] == [False, False, True] * 2
    assert [e.probe.epoch for e in events if e.probe] == [1, 2]
    assert summary.health == summary.probes[-1] and summary.probe_patches == 12
    assert summary.collapsed is None


@pytest.mark.realdata
def test_probe_stays_quiet_on_a_healthy_run(store: Path, spread_init: Path) -> None:
    """From weights whose features spread, SPEC 5's recipe (the default with an init) trains
    2 epochs without a collapse: every probe, and the final health, are clean."""
    out = store.parent / "healthy.pt"
    run = {key: value for key, value in RUN.items() if key != "recipe"} | {"dino": SMALL}
    summary = ssl_train(store, out, init=spread_init, workers=0, **run).as_dict()
    assert summary["recipe"] == "finetune" and len(summary["probes"]) == 2
    assert [p["reasons"] for p in summary["probes"]] == [[], []]  # as_dict: lists
    assert summary["health"]["collapsed"] is False
    assert summary["health"]["cosine_distance_median"] > SMALL.collapse_spread
    assert summary["init_probe"]["epoch"] == 0 and torch.load(out, weights_only=True)["epoch"] == 2


@pytest.mark.realdata
def test_checkpoint_is_accepted_by_the_encoder(reference) -> None:
    out, _, summary = reference
    ckpt = torch.load(out, weights_only=True)
    assert (ckpt["format"], ckpt["arch"], ckpt["epoch"]) == ("clanet-ssl", TINY, 2)
    encoder = build_encoder(EncoderConfig(arch=TINY), weights=out)
    assert encoder.weights_format == "clanet-ssl"
    assert encoder.embedding_dim == summary.embedding_dim == 4 * 192
    for key, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, ckpt["teacher"][key]), key
    untrained = build_encoder(EncoderConfig(arch=TINY), seed=0)  # the same random init
    assert not torch.equal(encoder.backbone.pos_embed, untrained.backbone.pos_embed)
    assert ckpt["recipe"] == {"name": "finetune", **RUN["dino"].as_dict()}
    assert [p["epoch"] for p in ckpt["probes"]] == [1, 2]
    with torch.inference_mode():
        features = encoder(random_patches(2))
    assert features.shape == (2, 768) and torch.isfinite(features).all()


@pytest.mark.realdata
def test_resumed_run_matches_the_uninterrupted_one(store: Path, reference) -> None:
    ref_out, ref_events, ref_summary = reference
    out = store.parent / "resumed.pt"

    def crash_in_second_epoch(event: TrainProgress) -> None:
        if event.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        ssl_train(store, out, progress=crash_in_second_epoch, workers=0, **RUN)
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 1 and saved["schedules"]["next_step"] == 3
    assert saved["losses"] == list(ref_summary.losses[:1])
    init_student, _ = build_dino(TINY, 112, SMALL, seed=0)
    frozen = init_student.head.last_layer.weight
    assert torch.equal(saved["student"]["head.last_layer.weight"], frozen)  # epoch 1: frozen
    ref_student = torch.load(ref_out, weights_only=True)["student"]
    assert not torch.equal(ref_student["head.last_layer.weight"], frozen)  # epoch 2: trained

    with pytest.raises(ClanetError, match="exists"):
        ssl_train(store, out, workers=0, **RUN)
    with pytest.raises(ClanetError, match="epochs 3"):
        ssl_train(store, out, resume=True, workers=0, **{**RUN, "epochs": 3})
    with pytest.raises(ClanetError, match="recipe 'scratch'"):
        ssl_train(store, out, resume=True, workers=0, recipe="scratch")

    events: list[TrainProgress] = []
    summary = ssl_train(store, out, resume=True, progress=events.append, workers=0)
    assert summary.start_epoch == 1 and summary.epochs_run == 1
    assert [(e.epoch, e.step, e.values) for e in events] == [
        (e.epoch, e.step, e.values) for e in ref_events[3:]
    ]
    # Bit for bit: one thread, and the order, augmentations and drop path seeded by (seed, epoch).
    assert [e.loss for e in events] == [e.loss for e in ref_events[3:]]
    assert summary.losses == ref_summary.losses
    assert summary.probes == ref_summary.probes
    resumed = torch.load(out, weights_only=True)["teacher"]
    for key, value in torch.load(ref_out, weights_only=True)["teacher"].items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.realdata
def test_cli_trains_and_prints_a_json_summary(
    store: Path, spread_init: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssl_module, "default_workers", lambda: 0)  # no worker start-up in tests
    out = store.parent / "cli.pt"
    args = ["ssl-train", "--store", str(store), "--out", str(out), "--arch", TINY, "--epochs", "1"]
    args += ["--batch-size", "2", "--k", "12", "--where", "rank>=10", "--format", "json"]
    args += ["--init", str(spread_init)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["patches"] == 2 and summary["where"] == ["rank>=10"]
    assert len(summary["losses"]) == 1 and summary["embedding_dim"] == 768
    assert summary["losses"][0] == pytest.approx(math.log(65536), rel=0.2)  # SPEC's 65536 outputs
    assert summary["recipe"] == "finetune" and summary["dino"]["out_dim"] == 65536
    assert summary["health"]["collapsed"] is False and len(summary["probes"]) == 1
    assert (
        PatchStore(store).query("patches").select("row").to_polars().height == 20
    )  # training wrote nothing there

    bad = ["ssl-train", "--store", str(store), "--out", str(store.parent / "bad.pt")]
    again = CliRunner().invoke(main, [*bad, "--where", "rank<two"])
    assert again.exit_code != 0 and "'two' is not a valid int16" in again.output


@pytest.mark.realdata
def test_encode_command_takes_the_checkpoint(store: Path, reference) -> None:
    """``clanet-store encode --weights CKPT`` reads the arch from the checkpoint and embeds."""
    out, _, summary = reference
    res = CliRunner().invoke(
        main, ["encode", "--store", str(store), "--weights", str(out), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert (report["arch"], report["weights_format"], report["random_init"]) == (
        TINY,
        "clanet-ssl",
        False,
    )
    assert report["embedding_dim"] == summary.embedding_dim == 768
    assert report["patches_encoded"] == PatchStore(store).query("patches").to_polars().height


# --- collapse ---------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # An absurd learning rate (AdamW steps of 0.8 on weights of about 0.02) wrecks the
        # backbone: weights whose features spread give the same feature for every patch.
        ({"base_lr": 50.0}, "no spread"),
        # A teacher temperature of 100 flattens every output to uniform.
        ({"teacher_temp": 100.0, "teacher_temp_end": 100.0}, "uniform teacher"),
    ],
)
def test_collapse_stops_the_run(store: Path, spread_init: Path, change: dict, rule: str) -> None:
    """From weights whose features spread, a run made to collapse stops after its first epoch,
    for the one rule it breaks."""
    out = store.parent / f"collapse-{rule}.pt"
    dino = dataclasses.replace(SMALL, **change)
    with pytest.raises(TrainingCollapsed) as caught:
        ssl_train(store, out, init=spread_init, workers=0, **{**RUN, "dino": dino})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("training collapsed after epoch 1: ")
    assert rule in message and "no checkpoint written" in message
    assert not out.exists()
    summary = caught.value.report
    assert len(summary.losses) == len(summary.probes) == 1 and summary.collapsed == message
    (reason,) = summary.probes[0].reasons
    assert reason.startswith(rule) and summary.health.collapsed


@pytest.mark.realdata
def test_collapse_is_judged_after_the_warm_up_and_keeps_the_epoch_before(
    store: Path, spread_init: Path
) -> None:
    """A warm-up of the whole first epoch: its probe is logged and its checkpoint written; the
    second epoch is judged, stops the run and leaves the first epoch's checkpoint."""
    out = store.parent / "collapse-warm.pt"
    dino = dataclasses.replace(
        SMALL, teacher_temp=100.0, teacher_temp_end=100.0, warmup_epochs=1, reference_epochs=2
    )
    with pytest.raises(TrainingCollapsed, match="after epoch 2") as caught:
        ssl_train(store, out, init=spread_init, workers=0, **{**RUN, "dino": dino})
    assert caught.value.report.warmup_steps == 3  # the 3 steps of epoch 1
    assert [p.collapsed for p in caught.value.report.probes] == [True, True]
    assert f"{out} keeps epoch 1, itself below a threshold during the lr warm-up" in str(
        caught.value
    )
    assert torch.load(out, weights_only=True)["epoch"] == 1


@pytest.mark.realdata
def test_cli_stops_a_collapsed_run(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --init the recipe is scratch; 1 epoch of a random init cannot spread its
    features, so the probe fires: the summary still goes to stdout, the reason is one line,
    the exit code is 1."""
    monkeypatch.setattr(ssl_module, "default_workers", lambda: 0)
    out = store.parent / "cli-collapse.pt"
    args = ["ssl-train", "--store", str(store), "--out", str(out), "--arch", TINY]
    args += ["--epochs", "1", "--batch-size", "4", "--k", "12"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "training collapsed after epoch 1: " in error[0]
    assert "no spread" in error[0] and "before training:" in error[0]
    assert "recipe scratch: lr 0.0005 x batch/256" in result.output
    assert "WARNING: the encoder is COLLAPSED" in result.output
    assert f"no checkpoint in {out}" in result.output and not out.exists()
    as_json = CliRunner().invoke(main, [*args, "--format", "json"])
    summary = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and summary["recipe"] == "scratch"
    assert summary["dino"]["out_dim"] == 256 and summary["dino"]["norm_last_layer"] is True
    assert summary["probes"][0]["collapsed"] is True


@pytest.mark.realdata
def test_scratch_schedules_on_a_toy_run(store: Path) -> None:
    """4 epochs of 6 steps from a random init: the values each step trained with follow the
    scratch recipe (lr warm-up of round(10 x 4/100 x 6) = 2 steps, then a cosine; teacher
    temperature 0.04 -> 0.07 over round(30 x 4/100 x 6) = 7 steps; weight decay and momentum
    cosines); the collapse rules are off (4 epochs cannot spread a random init's features)."""
    dino = dataclasses.replace(SCRATCH, hidden_dim=256, bottleneck_dim=64, n_local=2, **NO_RULES)
    events: list[TrainProgress] = []
    out = store.parent / "toy-scratch.pt"
    run = {"epochs": 4, "batch_size": 2, "arch": TINY, "k": 12, "dino": dino}
    summary = ssl_train(store, out, progress=events.append, workers=0, **run)
    assert summary.recipe == "scratch" and summary.warmup_steps == 2  # no --init
    assert summary.dino.out_dim == 256  # 12 patches: the smallest head
    values = [event.values for event in events]
    assert len(values) == 24
    assert values == [schedule_at(summary.dino, 2, step, 6, 4) for step in range(24)]
    peak = 5e-4 * 2 / 256
    lrs = [v.lr for v in values]
    assert lrs[:3] == pytest.approx([peak / 2, peak, peak])
    assert lrs[2:] == sorted(lrs[2:], reverse=True) and lrs[-1] == pytest.approx(1e-6, rel=0.05)
    temps = [v.teacher_temp for v in values]
    assert temps[0] == 0.04 and temps[7:] == pytest.approx([0.07] * 17)
    assert temps[:8] == sorted(temps[:8])
    assert [v.weight_decay for v in values] == sorted(v.weight_decay for v in values)
    assert [v.momentum for v in values] == sorted(v.momentum for v in values)
    saved = torch.load(out, weights_only=True)
    assert saved["recipe"]["name"] == "scratch" and saved["recipe"]["norm_last_layer"] is True
    assert saved["config"]["dino"]["out_dim"] == 0  # the recipe as asked; sized in "recipe"
