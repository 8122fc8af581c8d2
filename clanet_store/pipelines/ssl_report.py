"""What ``ssl-train`` returns (`pipelines.ssl_train`): a frozen dataclass whose ``as_dict()`` is
the JSON of ``ssl-train --format json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clanet_store.learn.splits import Split
from clanet_store.models.dino import CollapseProbe, DinoConfig


@dataclass(frozen=True)
class SSLReport:
    """One ssl-train run so far: what it trained on, how, and the teacher's probes.

    ``dino``: the recipe's numbers with the head sized for the patches; ``losses``: the mean loss
    of every epoch so far (resumed ones included); ``probes``: the teacher's collapse probe after
    each; ``init_probe``: the probe before the first epoch. ``collapsed``: the one-line reason
    when the run stopped on a collapse, else None (the command says it as its error, so it is not
    part of ``as_dict()``).
    """

    store: str
    out: str
    arch: str
    img_size: int
    embedding_dim: int
    init: str | None
    recipe: str
    dino: DinoConfig
    k: int
    where: tuple[str, ...]
    split: Split | None
    patches: int
    probe_patches: int
    batch_size: int
    steps_per_epoch: int
    warmup_steps: int
    epochs: int
    start_epoch: int
    epochs_run: int
    device: str
    workers: int
    seconds: float
    patches_per_s: float
    losses: tuple[float, ...]
    init_probe: CollapseProbe | None
    probes: tuple[CollapseProbe, ...]
    collapsed: str | None = None

    @property
    def health(self) -> CollapseProbe | None:
        """The last probe: the teacher as the checkpoint holds it (None before the first epoch)."""
        return self.probes[-1] if self.probes else None

    def as_dict(self) -> dict[str, Any]:
        split = self.split
        return {
            "store": self.store,
            "out": self.out,
            "arch": self.arch,
            "img_size": self.img_size,
            "embedding_dim": self.embedding_dim,
            "init": self.init,
            "recipe": self.recipe,
            "dino": self.dino.as_dict(),
            "k": self.k,
            "where": list(self.where),
            "split": None if split is None else {"kind": split.kind, "repeat": split.repeat},
            "patches": self.patches,
            "probe_patches": self.probe_patches,
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_steps": self.warmup_steps,
            "epochs": self.epochs,
            "start_epoch": self.start_epoch,
            "epochs_run": self.epochs_run,
            "device": self.device,
            "workers": self.workers,
            "seconds": self.seconds,
            "patches_per_s": self.patches_per_s,
            "losses": list(self.losses),
            "init_probe": self.init_probe.as_dict() if self.init_probe else None,
            "probes": [probe.as_dict() for probe in self.probes],
            "health": self.health.as_dict() if self.health else None,
        }
