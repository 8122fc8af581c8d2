"""DINO training on the patches of a store (SPEC 5): `ssl_train`, behind ``clanet-store ssl-train``.

The training set is every stored patch of rank < k (all batches, labels unused) that passes an
optional filter. Patches are read straight from the Zarr array by DataLoader workers, each with
its own handle, one sorted read per batch (one decompression per chunk touched), and augmented
there, so decoding and multi-crop run beside the training step.

Reproducible from (seed, epoch): the patch order, the augmentations (seeded per batch, whatever
the number of workers) and drop path (the global RNG, seeded per epoch inside a forked RNG) depend
on nothing else. A checkpoint, written atomically after every epoch through `ssl_checkpoint`,
holds the teacher backbone (what ``encode --weights`` reads), the teacher head, the student,
AdamW, the loss centre, the schedule position, the epoch, the run config, the recipe's numbers
and the per-epoch mean losses and collapse probes; ``resume`` continues from it with the same
config, so the same schedule values.

After every epoch the teacher is probed on a fixed set of stored patches (`probe_teacher`: its
output entropy and the spread of its features); from the end of the lr warm-up on, a probe that
breaks one of the recipe's collapse rules stops the run (`TrainingCollapsed`) and the checkpoint
of the epoch before is kept.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from lancedb.expr import col
from torch.utils.data import DataLoader, Dataset

from clanet_store.errors import ClanetError
from clanet_store.learn.splits import Split
from clanet_store.models.checkpoint import ssl_checkpoint
from clanet_store.models.device import select_device
from clanet_store.models.dino import (
    RECIPES,
    CollapseProbe,
    DinoConfig,
    DinoLoss,
    DinoNet,
    MultiCrop,
    ScheduleValues,
    build_dino,
    build_loss,
    build_optimizer,
    collapse_reasons,
    default_recipe,
    probe_teacher,
    schedule_at,
    train_step,
    warmup_steps,
)
from clanet_store.models.encoder import EncoderConfig
from clanet_store.pipelines.inductive import split_patch_rows
from clanet_store.pipelines.ssl_report import SSLReport
from clanet_store.schemas import load_schema
from clanet_store.stores.filters import parse_filters
from clanet_store.stores.patch_store import PatchStore
from clanet_store.torchfile import TorchFileError, load_torch_file


@dataclasses.dataclass(frozen=True)
class SSLTrainConfig:
    """One training run; saved in every checkpoint and checked again on resume.

    arch: timm ViT name, built at img_size px; k: patches per image (rank < k); where: filters
    on the patches table (see `training_rows`); init: the weights file the run started from
    (None: random init seeded with ``seed``); recipe: the name of the recipe dino started from
    (`RECIPES`; checkpoints older than recipes trained SPEC 5, ``finetune``); dino: its numbers.
    """

    arch: str = "vit_small_patch8_224"
    img_size: int = 112
    epochs: int = 200
    batch_size: int = 256
    k: int = 10
    where: tuple[str, ...] = ()
    init: str | None = None
    seed: int = 0
    recipe: str = "finetune"
    dino: DinoConfig = dataclasses.field(default_factory=DinoConfig)

    def as_dict(self) -> dict[str, Any]:
        """Numbers, strings and tuples only (loads with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SSLTrainConfig:
        """Inverse of `as_dict`."""
        fields = {**values, "where": tuple(values["where"])}
        return cls(**{**fields, "dino": DinoConfig.from_dict(values["dino"])})


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """Sent after every step. ``epoch_loss`` and ``probe`` are set on an epoch's last step, once
    its checkpoint is written: the epoch's mean loss and the teacher's collapse probe."""

    epoch: int
    step: int
    total_steps: int
    loss: float
    values: ScheduleValues
    epoch_loss: float | None = None
    probe: CollapseProbe | None = None


class TrainingCollapsed(ClanetError):
    """The teacher collapsed: the one-line message says after which epoch, why, and what
    checkpoint is kept; ``report`` is the run up to that epoch (its ``collapsed`` the message)."""

    def __init__(self, message: str, report: SSLReport) -> None:
        super().__init__(message)
        self.report = report


def training_rows(store: PatchStore, k: int, where: Sequence[str]) -> np.ndarray:
    """Sorted Zarr rows of the patches with rank < k that pass the ``where`` filters
    (`parse_filters`: ``cell_line=A549``, ``batch!=b2``, typed by the patches schema)."""
    extra = parse_filters(where, load_schema("patches"))
    return np.sort(store.query("patches").where(col("rank") < k).where(extra).to_numpy("row"))


class EpochBatches:
    """The batches of one epoch: shuffled rows, sorted inside a batch, each with its own seed.

    Set ``epoch`` before iterating; the order and the seeds depend only on (seed, epoch).
    The incomplete last batch is dropped (DINO's ``drop_last``).
    """

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.rows)[: len(self) * self.batch_size]
        seeds = rng.integers(2**63, size=len(self))
        for seed, batch in zip(seeds, order.reshape(len(self), self.batch_size), strict=True):
            yield int(seed), np.sort(batch)


class PatchViews(Dataset):
    """(seed, rows) -> the multi-crop views of those patches, read from the Zarr array.

    The Zarr array pickles, so each worker unpickles a handle of its own; augmentation
    runs under a forked RNG seeded with the batch's seed (the caller's RNG is left as it was).
    """

    def __init__(self, array: zarr.Array, crop: MultiCrop) -> None:
        self.array, self.crop = array, crop

    def __getitem__(self, item: tuple[int, np.ndarray]) -> list[torch.Tensor]:
        seed, rows = item
        patches = torch.from_numpy(self.array.oindex[rows])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU RNG only, restored by fork_rng
            return self.crop.batch(patches)


def patch_loader(
    array: zarr.Array, batches: EpochBatches, dino: DinoConfig, workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader of view batches; ``workers`` processes stay alive across epochs.

    Workers start by forkserver (spawn where there is none), never by a plain fork: this process
    runs LanceDB's and Zarr's background threads, which a forked child would inherit half-copied.
    A worker pays the imports once per run (seconds); 0 workers load in this process.
    """
    context = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return DataLoader(
        PatchViews(array, MultiCrop(dino)),
        batch_size=None,
        sampler=batches,
        num_workers=workers,
        multiprocessing_context=context if workers > 0 else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


def probe_rows(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The fixed probe set: ``n`` of the training rows (all when fewer), drawn with ``seed``."""
    rng = np.random.default_rng([seed, len(rows)])
    return np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))


def default_workers() -> int:
    """Loader processes: one core is left to the training step, at most 4 (0: in-process)."""
    return min(4, (os.cpu_count() or 1) - 1)


@dataclasses.dataclass
class TrainState:
    """What a step changes: student, teacher, loss centre, AdamW; saved and restored together."""

    student: DinoNet
    teacher: DinoNet
    loss_fn: DinoLoss
    optimizer: torch.optim.Optimizer

    def step(
        self,
        views: Sequence[torch.Tensor],
        values: ScheduleValues,
        freeze: bool,
        clip_grad: float,
        koleo_weight: float = 0.0,
    ) -> float:
        """One DINO step (`train_step`); returns the loss."""
        return train_step(
            self.student,
            self.teacher,
            self.loss_fn,
            self.optimizer,
            views,
            values,
            freeze,
            clip_grad,
            koleo_weight,
        )

    def state_dicts(self) -> dict[str, Any]:
        """The checkpoint entries; ``teacher`` is the backbone alone (what the encoder reads)."""
        return {
            "teacher": self.teacher.backbone.state_dict(),
            "teacher_head": self.teacher.head.state_dict(),
            "student": self.student.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dicts(self, ckpt: dict[str, Any]) -> None:
        """Inverse of `state_dicts`; raises ClanetError when the checkpoint does not fit."""
        try:
            self.teacher.backbone.load_state_dict(ckpt["teacher"])
            self.teacher.head.load_state_dict(ckpt["teacher_head"])
            self.student.load_state_dict(ckpt["student"])
            self.loss_fn.load_state_dict(ckpt["loss"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ClanetError(f"cannot resume from this checkpoint: {exc}") from exc


def ssl_train(
    store_path: str | Path,
    out: str | Path,
    epochs: int | None = None,
    batch_size: int | None = None,
    arch: str | None = None,
    init: str | Path | None = None,
    resume: bool = False,
    where: Sequence[str] | None = None,
    k: int | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    *,
    recipe: str | None = None,
    dino: DinoConfig | None = None,
    seed: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    split: Split | None = None,
) -> SSLReport:
    """Train DINO on a store's patches, checkpointing to ``out`` after every epoch.

    Options left as None take `SSLTrainConfig`'s defaults, or on ``resume`` the values saved in
    ``out``; a value given on resume must equal the saved one (the schedules depend on it).
    ``recipe`` names the numbers (`RECIPES`; default `default_recipe`: ``scratch`` without
    ``init``, ``finetune`` with); ``dino`` gives them explicitly instead (a recipe with some
    values changed). ``resume`` with no file at ``out`` starts afresh; without ``resume`` an
    existing ``out`` is an error. ``workers``: loader processes (default `default_workers`; 0
    loads in this process). Returns the run (`SSLReport`): ``losses`` the mean loss of every epoch
    so far, ``probes`` the teacher's collapse probe after each, ``health`` the last. Raises
    `TrainingCollapsed` when a probe after the lr warm-up breaks a collapse rule.
    ``split``: train on the patches of its training sequences only (inductive,
    `inductive.split_patch_rows`), recorded in the checkpoint; a resumed run must be given the
    same split.
    """
    start_time = time.perf_counter()
    out = Path(out)
    requested = {
        "epochs": epochs,
        "batch_size": batch_size,
        "arch": arch,
        "init": None if init is None else str(init),
        "where": None if where is None else tuple(where),
        "k": k,
        "seed": seed,
        "recipe": recipe,
        "dino": dino,
    }
    given = {key: value for key, value in requested.items() if value is not None}
    config, saved = _run_config(out, resume, given)
    run = _set_up(store_path, out, config, saved, split, select_device(device), start_time)
    run.workers = default_workers() if workers is None else workers
    if _train(run, progress):
        message = _collapse_message(out, run.probes, run.init_probe)
        raise TrainingCollapsed(message, run.report(collapsed=message))
    return run.report()


@dataclasses.dataclass
class _Run:
    """One run, set up: where it reads and writes, what it trains on, its state and history."""

    out: Path
    config: SSLTrainConfig
    store: PatchStore
    rows: np.ndarray
    split: Split | None
    batches: EpochBatches
    numbers: DinoConfig  # the recipe with its head sized for the rows
    state: TrainState
    device: torch.device
    probe_patches: torch.Tensor
    start_time: float
    workers: int = 0
    start_epoch: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    probes: list[CollapseProbe] = dataclasses.field(default_factory=list)
    init_probe: CollapseProbe | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    @property
    def warm(self) -> int:
        """Steps of the lr warm-up (no collapse verdict before its end)."""
        return warmup_steps(
            self.numbers.warmup_epochs, self.numbers, self.steps_per_epoch, self.config.epochs
        )

    def values(self, step: int) -> ScheduleValues:
        c = self.config
        return schedule_at(self.numbers, c.batch_size, step, self.steps_per_epoch, c.epochs)

    def report(self, collapsed: str | None = None) -> SSLReport:
        """The run so far (`ssl_train`'s return value)."""
        config, seconds = self.config, time.perf_counter() - self.start_time
        epochs_run = len(self.losses) - self.start_epoch
        return SSLReport(
            store=str(self.store.path),
            out=str(self.out),
            arch=config.arch,
            img_size=config.img_size,
            embedding_dim=EncoderConfig().n_blocks * self.state.student.backbone.embed_dim,
            init=config.init,
            recipe=config.recipe,
            dino=self.numbers,
            k=config.k,
            where=tuple(config.where),
            split=self.split,
            patches=len(self.rows),
            probe_patches=len(self.probe_patches),
            batch_size=config.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            warmup_steps=self.warm,
            epochs=config.epochs,
            start_epoch=self.start_epoch,
            epochs_run=epochs_run,
            device=str(self.device),
            workers=self.workers,
            seconds=seconds,
            patches_per_s=epochs_run * self.steps_per_epoch * config.batch_size / seconds,
            losses=tuple(self.losses),
            init_probe=self.init_probe,
            probes=tuple(self.probes),
            collapsed=collapsed,
        )


def _set_up(
    store_path: str | Path,
    out: Path,
    config: SSLTrainConfig,
    saved: dict[str, Any] | None,
    split: Split | None,
    device: torch.device,
    start_time: float,
) -> _Run:
    """Select the training rows, check them against a checkpoint to resume, build the state
    and restore it and the history from ``saved`` (else probe the init)."""
    store = PatchStore(store_path)
    rows = training_rows(store, config.k, config.where)
    if split is not None:
        rows = np.intersect1d(rows, split_patch_rows(store, split, config.k))
    if saved and saved.get("split") != (None if split is None else split.as_dict()):
        raise ClanetError(f"{out}: cannot resume with another split than the saved one")
    batches = EpochBatches(rows, config.batch_size, config.seed)
    if len(batches) == 0:
        raise ClanetError(
            f"{store.path}: {len(rows)} patches selected, fewer than one batch of "
            f"{config.batch_size}"
        )
    if saved and saved["schedules"]["steps_per_epoch"] != len(batches):
        raise ClanetError(
            f"{out}: trained on {saved['patches']} patches, the store now selects {len(rows)}; "
            "resuming would change the schedules"
        )
    numbers = config.dino.sized_for(len(rows))
    state = _build_state(config, numbers, device, from_init=saved is None)
    probe = store.read_rows(probe_rows(rows, numbers.probe_patches, config.seed))
    run = _Run(out, config, store, rows, split, batches, numbers, state, device,
               torch.from_numpy(probe), start_time)  # fmt: skip
    if saved:
        state.load_state_dicts(saved)
        run.start_epoch, run.losses = saved["epoch"], list(saved["losses"])
        run.probes = [CollapseProbe.from_dict(p) for p in saved.get("probes", [])]
        if "init_probe" in saved:
            run.init_probe = CollapseProbe.from_dict(saved["init_probe"])
    else:
        run.init_probe = _probe(state, numbers, run.probe_patches, run.values(0), 0)
    return run


def _train(run: _Run, progress: Callable[[TrainProgress], None] | None) -> bool:
    """Train from ``run.start_epoch`` to the last epoch, probing and checkpointing after each;
    True when a probe after the warm-up found the teacher collapsed (its epoch not saved).
    The loader's worker processes stop when this returns."""
    config, steps_per_epoch = run.config, run.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    loader = patch_loader(
        run.store.array, run.batches, run.numbers, run.workers, run.device.type == "cuda"
    )
    with torch.random.fork_rng():
        for epoch in range(run.start_epoch, config.epochs):
            run.batches.epoch = epoch
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            run.state.student.train()
            freeze = epoch < run.numbers.freeze_last_layer_epochs
            epoch_losses = []
            for i, views in enumerate(loader):
                step = epoch * steps_per_epoch + i
                values = run.values(step)
                numbers = run.numbers
                loss = run.state.step(
                    views, values, freeze, numbers.clip_grad, numbers.koleo_weight
                )
                epoch_losses.append(loss)
                event = TrainProgress(epoch, step + 1, total_steps, loss, values)
                if i == steps_per_epoch - 1:
                    probe = _probe(run.state, run.numbers, run.probe_patches, values, epoch + 1)
                    run.losses.append(float(np.mean(epoch_losses)))
                    run.probes.append(probe)
                    if probe.collapsed and step + 1 > run.warm:
                        return True
                    _save(run, epoch + 1)
                    event = dataclasses.replace(event, epoch_loss=run.losses[-1], probe=probe)
                if progress is not None:
                    progress(event)
    return False


def recipe_with(recipe: str | None, init: object, changes: dict[str, Any]) -> DinoConfig | None:
    """The numbers of ``recipe`` (default by ``init``, `default_recipe`) with ``changes``
    (e.g. ``centering``, ``koleo_weight``); None when there are no changes (the recipe as named,
    or on resume as saved)."""
    if not changes:
        return None
    name = recipe or default_recipe(init)
    if name not in RECIPES:
        raise ClanetError(f"unknown recipe {name!r}: one of {', '.join(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **changes)


def stage_recipe(params: dict[str, Any]) -> tuple[str, DinoConfig]:
    """The recipe name and numbers of a pipeline's ``[ssl_train]`` table: ``recipe`` (default
    by ``init``) with the values of ``dino`` changed; errors name the key."""
    recipe = params["recipe"] or default_recipe(params["init"] or None)
    if recipe not in RECIPES:
        raise ClanetError(f"ssl_train.recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    try:
        return recipe, dataclasses.replace(RECIPES[recipe], **params["dino"])
    except TypeError as exc:
        raise ClanetError(f"ssl_train.dino: {exc}") from None


def stage_run(
    store_path: str | Path,
    out: Path,
    params: dict[str, Any],
    split: Split | None,
    progress: Callable[[TrainProgress], None] | None = None,
    say: Callable[[str], None] = print,
    resume: bool = False,
) -> SSLReport:
    """One ssl-train run of a pipeline's ``[ssl_train]`` table into ``out``, on the training side
    of ``split`` if given (what ``run`` and an ``ablation --ssl-config`` train per split).

    Afresh, unless ``resume``: then a checkpoint of the same run at ``out`` is continued (a
    finished one is reused as it is). A collapse is said and recorded (`SSLReport.collapsed`:
    the reason), not raised; the checkpoint of the epoch before is kept (none when the first epoch
    collapsed).
    """
    recipe, dino = stage_recipe(params)
    if not resume:
        out.unlink(missing_ok=True)  # made with other parameters or data
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return ssl_train(
            store_path,
            out,
            epochs=params["epochs"],
            batch_size=params["batch_size"],
            arch=params["arch"],
            init=params["init"] or None,
            resume=resume,
            k=params["k"],
            progress=progress,
            recipe=recipe,
            dino=dino,
            seed=params["seed"],
            workers=params["workers"],
            split=split,
        )
    except TrainingCollapsed as exc:
        say(f"WARNING: {exc}")
        return exc.report


def _probe(
    state: TrainState,
    numbers: DinoConfig,
    patches: torch.Tensor,
    values: ScheduleValues,
    epoch: int,
) -> CollapseProbe:
    """The teacher's probe after ``epoch`` epochs, at the teacher temperature of its last step,
    with the recipe's verdict."""
    probe = probe_teacher(
        state.teacher,
        state.loss_fn,
        patches,
        values.teacher_temp,
        EncoderConfig().n_blocks,
        epoch,
    )
    return dataclasses.replace(probe, reasons=collapse_reasons(probe, numbers))


def _collapse_message(
    out: Path, probes: list[CollapseProbe], init_probe: CollapseProbe | None
) -> str:
    """One line: the epoch of the last probe, every rule it breaks, the same values at the
    random / given init, and what ``out`` holds."""
    probe, kept = probes[-1], probes[-1].epoch - 1
    if kept == 0:
        where = "no checkpoint written: no epoch before it"
    elif len(probes) > 1 and probes[-2].collapsed:
        where = f"{out} keeps epoch {kept}, itself below a threshold during the lr warm-up"
    else:
        where = f"{out} keeps epoch {kept}, the last healthy one"
    before = ""
    if init_probe is not None:
        before = (
            f"; before training: entropy per patch {init_probe.teacher_entropy:.3f}, of the mean "
            f"{init_probe.batch_entropy:.3f}, median cosine distance "
            f"{init_probe.cosine_distance_median:.4f}"
        )
    reasons = "; ".join(probe.reasons)
    return f"training collapsed after epoch {probe.epoch}: {reasons}{before} ({where})"


def _epoch_seed(seed: int, epoch: int) -> int:
    """The global torch seed of an epoch: drop path (augmentations are seeded per batch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _run_config(
    out: Path, resume: bool, requested: dict[str, Any]
) -> tuple[SSLTrainConfig, dict[str, Any] | None]:
    """The run's config, and the checkpoint to resume from (None: a fresh run)."""
    if not out.exists():
        recipe = requested.get("recipe") or default_recipe(requested.get("init"))
        if recipe not in RECIPES:
            raise ClanetError(f"unknown recipe {recipe!r}: one of {', '.join(RECIPES)}")
        config = SSLTrainConfig(
            **{**requested, "recipe": recipe, "dino": requested.get("dino", RECIPES[recipe])}
        )
        if min(config.epochs, config.batch_size, config.k) < 1:
            raise ClanetError("epochs, batch size and k must be at least 1")
        return config, None
    if not resume:
        raise ClanetError(f"{out} exists: pass --resume to continue it, or choose another --out")
    try:
        ckpt = load_torch_file(out, "an ssl-train checkpoint")
    except TorchFileError as exc:
        raise ClanetError(str(exc)) from None
    if not isinstance(ckpt, dict) or not {"config", "schedules", "optimizer"} <= ckpt.keys():
        raise ClanetError(f"{out}: not an ssl-train checkpoint, cannot resume from it")
    saved = SSLTrainConfig.from_dict(ckpt["config"])
    conflicts = [
        f"{key} {value!r} (saved: {getattr(saved, key)!r})"
        for key, value in requested.items()
        if getattr(saved, key) != value
    ]
    if conflicts:
        raise ClanetError(f"{out}: cannot resume with other settings: {'; '.join(conflicts)}")
    return saved, ckpt


def _build_state(
    config: SSLTrainConfig, numbers: DinoConfig, device: torch.device, from_init: bool
) -> TrainState:
    """Fresh networks (from ``config.init`` when ``from_init``), loss and AdamW on ``device``;
    ``numbers`` is the recipe with its head sized."""
    init = config.init if from_init else None
    try:
        student, teacher = build_dino(config.arch, config.img_size, numbers, init, config.seed)
    except ValueError as exc:  # an unknown arch, or a bad --init file (CheckpointError)
        raise ClanetError(str(exc)) from exc
    student, teacher = student.to(device), teacher.to(device)
    loss_fn = build_loss(numbers).to(device)
    return TrainState(student, teacher, loss_fn, build_optimizer(student))


def _save(run: _Run, epoch: int) -> None:
    """Write the checkpoint after ``epoch`` epochs (to a temporary file, then renamed: never a
    half-written file). ``recipe`` holds the numbers trained with (the head sized)."""
    config, steps_per_epoch = run.config, run.steps_per_epoch
    next_step = epoch * steps_per_epoch
    schedules = {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": config.epochs * steps_per_epoch,
        "next_step": next_step,
        "next": dataclasses.asdict(run.values(next_step)),
    }
    entries = run.state.state_dicts()
    teacher = entries.pop("teacher")
    ckpt = ssl_checkpoint(
        teacher,
        config.arch,
        config.img_size,
        **entries,
        schedules=schedules,
        epoch=epoch,
        config=config.as_dict(),
        recipe={"name": config.recipe, **run.numbers.as_dict()},
        losses=run.losses,
        probes=[probe.as_dict() for probe in run.probes],
        **({"init_probe": run.init_probe.as_dict()} if run.init_probe else {}),
        patches=len(run.rows),
        split=None if run.split is None else run.split.as_dict(),
    )
    out = run.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
