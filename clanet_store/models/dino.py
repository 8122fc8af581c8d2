"""DINO self-supervised training of the patch encoder (SPEC section 5), as pure torch pieces.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021. A student
network (ViT backbone + projection head) sees 2 global and 8 local crops of a grey patch; the
teacher, an exponential moving average (EMA) of the student, sees the 2 global crops; the loss is
the cross-entropy between the teacher's centred, sharpened softmax and the student's softmax on
every other view. `DinoConfig` holds every number of SPEC 5; `train_step` is one optimisation
step; the schedules are functions of the global step, so a resumed run recomputes the same values.
Nothing here knows about stores or files (except `--init` weights, read by the encoder's loader).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from clanet_store.models.encoder import load_backbone_weights

N_GLOBAL = 2


@dataclasses.dataclass(frozen=True)
class DinoConfig:
    """Every number of SPEC 5; `as_dict` / `from_dict` round-trip it through a checkpoint.

    base_lr is per 256 patches (the learning rate is base_lr x batch / 256). hidden_dim and
    bottleneck_dim are DINO's head defaults (SPEC gives only out_dim).
    """

    # multi-crop
    global_size: int = 112
    global_scale: tuple[float, float] = (0.5, 1.0)
    n_local: int = 8
    local_size: int = 32
    local_scale: tuple[float, float] = (0.05, 0.5)
    flip_p: float = 0.3
    jitter_p: float = 0.5
    brightness: float = 0.5
    contrast: float = 0.5
    # projection head
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    freeze_last_layer_epochs: int = 1
    # loss
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # schedules and optimiser
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    base_lr: float = 5e-5
    min_lr: float = 1e-6
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    drop_path: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict of numbers and tuples (loads with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DinoConfig:
        """Inverse of `as_dict` (lists become tuples again)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --- multi-crop -----------------------------------------------------------------------------


class MultiCrop:
    """A grey uint8 patch [H, W] -> 2 global + n_local local views, each [1, S, S] uint8.

    Each view: RandomResizedCrop (bicubic, antialiased), horizontal and vertical flips, and
    ColorJitter(brightness, contrast) applied with probability jitter_p; no blur, solarisation or
    normalisation (SPEC 5). Randomness: torch's global RNG (the loader seeds it per batch).
    """

    def __init__(self, config: DinoConfig) -> None:
        self.n_local = config.n_local
        self.global_view = _view_transform(config, config.global_size, config.global_scale)
        self.local_view = _view_transform(config, config.local_size, config.local_scale)

    def __call__(self, patch: Tensor) -> list[Tensor]:
        image = patch.unsqueeze(0)
        views = [self.global_view(image) for _ in range(N_GLOBAL)]
        return views + [self.local_view(image) for _ in range(self.n_local)]

    def batch(self, patches: Tensor) -> list[Tensor]:
        """[B, H, W] uint8 -> 2 + n_local views, each [B, 1, S, S] uint8 (view-major, as DINO)."""
        per_patch = [self(patch) for patch in patches]
        return [torch.stack(view) for view in zip(*per_patch, strict=True)]


def _view_transform(config: DinoConfig, size: int, scale: tuple[float, float]) -> v2.Transform:
    jitter = v2.ColorJitter(brightness=config.brightness, contrast=config.contrast)
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
            v2.RandomHorizontalFlip(config.flip_p),
            v2.RandomVerticalFlip(config.flip_p),
            v2.RandomApply([jitter], p=config.jitter_p),
        ]
    )


# --- networks -------------------------------------------------------------------------------


class DinoHead(nn.Module):
    """DINO's projection head: 3-layer MLP (GELU) -> L2-normalised bottleneck -> last layer.

    The last layer is a plain linear layer (SPEC 5: not weight-normalised). It starts with
    unit-norm rows, as DINO's weight-normalised layer does, so the initial logits are cosines.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        with torch.no_grad():
            self.last_layer.weight.div_(self.last_layer.weight.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class DinoNet(nn.Module):
    """Backbone + head over a list of views (DINO's MultiCropWrapper).

    Consecutive views of one size go through the backbone as one batch; the backbone's feature is
    its class token after the final LayerNorm. Views are grey uint8 [B, 1, S, S], scaled to [0, 1]
    and repeated to 3 channels like the encoder's input (SPEC 4).
    """

    def __init__(self, backbone: nn.Module, head: DinoHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        """2 + n views of B patches -> [(2 + n) * B, out_dim] logits, view-major."""
        device = self.backbone.cls_token.device
        features = []
        for _size, group in itertools.groupby(views, key=lambda view: view.shape[-1]):
            x = torch.cat(list(group)).to(device, non_blocking=True)
            x = (x.float() / 255).expand(-1, 3, -1, -1)
            features.append(self.backbone.forward_features(x)[:, 0])
        return self.head(torch.cat(features))


def build_dino(
    arch: str,
    img_size: int,
    config: DinoConfig,
    init: str | Path | None = None,
    seed: int = 0,
) -> tuple[DinoNet, DinoNet]:
    """Student and teacher for a timm ViT: the teacher starts as a copy of the student.

    The backbone takes any crop size (timm's ``dynamic_img_size`` resamples the position
    embedding, as DINO's ``interpolate_pos_encoding``), has drop path ``config.drop_path`` (the
    teacher runs in eval mode, so without it), and is initialised from ``init`` (timm / DINO /
    clanet-ssl file, via the encoder's loader) or from a random init seeded with ``seed`` (the
    global RNG is left as it was). Raises ValueError for an unknown arch or one without a class
    token, CheckpointError for a bad ``init`` file.
    """
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU RNG only, restored by fork_rng
        try:
            backbone = timm.create_model(
                arch,
                pretrained=False,
                img_size=img_size,
                num_classes=0,
                drop_path_rate=config.drop_path,
                dynamic_img_size=True,
            )
        except TypeError as exc:  # a timm model that takes no dynamic_img_size: not a ViT
            raise ValueError(f"{arch} is not a ViT that DINO training supports ({exc})") from exc
        if getattr(backbone, "cls_token", None) is None:
            raise ValueError(f"{arch} has no class token: the DINO head needs one")
        head = DinoHead(
            backbone.embed_dim, config.out_dim, config.hidden_dim, config.bottleneck_dim
        )
    if init is not None:
        load_backbone_weights(backbone, init)
    student = DinoNet(backbone, head)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    return student, teacher


# --- loss -----------------------------------------------------------------------------------


class DinoLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened softmax and the student's softmax.

    For teacher view t (global) and student view s != t, per patch,
    ``-sum_k q_k log p_k`` with ``q = softmax((teacher_t - center) / teacher_temp)`` and
    ``p = softmax(student_s / student_temp)``, averaged over the batch, then over the
    2 x (2 + n_local) - 2 pairs. The centre is a buffer (saved with the state dict), moved by
    `update_center` after each step.
    """

    center: Tensor

    def __init__(
        self, out_dim: int, teacher_temp: float, student_temp: float, center_momentum: float
    ) -> None:
        super().__init__()
        self.teacher_temp = teacher_temp
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: Tensor, teacher_out: Tensor) -> Tensor:
        """student_out [(2 + n) * B, D] and teacher_out [2 * B, D], view-major -> scalar loss."""
        n_views = student_out.shape[0] // (teacher_out.shape[0] // N_GLOBAL)
        log_p = F.log_softmax(student_out / self.student_temp, dim=-1).chunk(n_views)
        q = F.softmax((teacher_out - self.center) / self.teacher_temp, dim=-1).detach()
        terms = [
            -(q_t * log_p[s]).sum(dim=-1).mean()
            for t, q_t in enumerate(q.chunk(N_GLOBAL))
            for s in range(n_views)
            if s != t
        ]
        return torch.stack(terms).mean()

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher's outputs over all global views."""
        batch_center = teacher_out.mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def build_loss(config: DinoConfig) -> DinoLoss:
    """The DINO loss with SPEC 5's temperatures and centre momentum."""
    return DinoLoss(
        config.out_dim, config.teacher_temp, config.student_temp, config.center_momentum
    )


# --- schedules, optimiser, one step ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScheduleValues:
    """Learning rate, weight decay and teacher momentum used by one step."""

    lr: float
    weight_decay: float
    momentum: float


def cosine(start: float, end: float, step: int, total_steps: int) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (DINO's schedules)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def schedule_at(config: DinoConfig, batch_size: int, step: int, total_steps: int) -> ScheduleValues:
    """The schedules of SPEC 5 at global step ``step`` of ``total_steps``.

    lr: cosine from base_lr x batch / 256 to min_lr; weight decay: cosine from 0.04 to 0.4;
    teacher momentum: cosine from 0.996 to 1.
    """
    return ScheduleValues(
        lr=cosine(config.base_lr * batch_size / 256, config.min_lr, step, total_steps),
        weight_decay=cosine(config.weight_decay_start, config.weight_decay_end, step, total_steps),
        momentum=cosine(config.momentum_start, config.momentum_end, step, total_steps),
    )


def build_optimizer(student: DinoNet) -> torch.optim.AdamW:
    """AdamW over two groups, as DINO: weights (decayed) and biases / norms (never decayed).

    lr and the first group's weight decay are set by `train_step` from the schedules.
    """
    decayed, plain = [], []
    for name, param in student.named_parameters():
        (plain if name.endswith(".bias") or param.ndim == 1 else decayed).append(param)
    return torch.optim.AdamW([{"params": decayed}, {"params": plain, "weight_decay": 0.0}], lr=0.0)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1 - momentum)


def train_step(
    student: DinoNet,
    teacher: DinoNet,
    loss_fn: DinoLoss,
    optimizer: torch.optim.Optimizer,
    views: Sequence[Tensor],
    values: ScheduleValues,
    freeze_last_layer: bool,
) -> float:
    """One DINO step on the views of one batch; returns the loss.

    Sets lr / weight decay, runs the teacher on the global views and the student on all views,
    steps AdamW (the head's last layer gets no update while ``freeze_last_layer``), then moves the
    teacher (EMA with ``values.momentum``) and the centre.
    """
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = values.lr
        if i == 0:
            group["weight_decay"] = values.weight_decay
    with torch.no_grad():
        teacher_out = teacher(views[:N_GLOBAL])
    loss = loss_fn(student(views), teacher_out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if freeze_last_layer:
        for param in student.head.last_layer.parameters():
            param.grad = None
    optimizer.step()
    ema_update(teacher, student, values.momentum)
    loss_fn.update_center(teacher_out)
    return loss.item()
