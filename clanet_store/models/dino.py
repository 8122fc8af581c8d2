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

from clanet_store.models.checkpoint import load_backbone_weights
from clanet_store.models.dino_regularisers import koleo_loss, sinkhorn_knopp
from clanet_store.models.encoder import EncoderConfig, PatchEncoder
from clanet_store.models.health import MIN_MEDIAN_DISTANCE, embedding_health

N_GLOBAL = 2


@dataclasses.dataclass(frozen=True)
class DinoConfig:
    """A DINO recipe: every number of one way of training, as data; saved with every checkpoint.

    The defaults are SPEC 5 (`FINETUNE`, for an ImageNet or DINO init); `SCRATCH` is DINO's own
    from-scratch recipe (facebookresearch/dino ``main_dino.py``). base_lr is per 256 patches (the
    peak learning rate is base_lr x batch / 256). hidden_dim and bottleneck_dim are DINO's head
    defaults (SPEC gives only out_dim). ``as_dict`` / ``from_dict`` round-trip it.

    Warm-ups (lr: warmup_epochs, teacher temperature: teacher_temp_warmup_epochs) are DINO's
    epochs of its reference_epochs-long ImageNet run; a shorter run shrinks them in proportion
    (10 % and 30 % of the run), a longer one keeps them (`warmup_steps`).

    out_dim 0 sizes the head for the data (`head_out_dim`): one output per patches_per_output
    training patches, DINO's ratio (65536 outputs for 1.28 M ImageNet images), a power of two
    between min_out_dim and 65536. A head far wider than the data has samples gives most outputs
    nothing to do and a flat teacher distribution (SPEC 5: smaller heads suit small patch sets).

    Collapse (`collapse_reasons`), judged on a fixed probe set of probe_patches stored patches
    after every epoch from the end of the lr warm-up (before it, a network trained from scratch
    is still at its random init, whose features are all alike):
    - uniform: the teacher's mean per-patch entropy >= collapse_uniform x ln(out_dim). A healthy
      teacher is sharp (temperature 0.04-0.07) and stays well below; at 0.98 the teacher's
      centred output differs from uniform by about as much as a random init's does.
    - one dimension: the entropy of the teacher's mean distribution over the probe set <=
      collapse_one_hot x ln(out_dim): every patch goes to the same few outputs (at 0.1 and 256
      outputs, fewer than 2 outputs in use), DINO's collapse without centring.
    - spread: median cosine distance between the teacher backbone's features (what ``encode``
      stores) of random pairs of probe patches (`embedding_health`) <= collapse_spread, the
      health rule's 0.01: a random-init ViT gives about 0.001-0.003 (issue 18: the collapsed demo
      encoder 0.001, its largest distance 0.007).
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
    patches_per_output: int = 20
    min_out_dim: int = 256
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = False
    freeze_last_layer_epochs: int = 1
    # loss
    teacher_temp: float = 0.04
    teacher_temp_end: float = 0.04
    teacher_temp_warmup_epochs: float = 0.0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: str = "center"
    sinkhorn_iterations: int = 3
    koleo_weight: float = 0.0
    # schedules and optimiser
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    base_lr: float = 5e-5
    warmup_epochs: float = 0.0
    min_lr: float = 1e-6
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 0.0
    reference_epochs: int = 100
    drop_path: float = 0.1
    # collapse probe
    probe_patches: int = 128
    collapse_uniform: float = 0.98
    collapse_one_hot: float = 0.1
    collapse_spread: float = MIN_MEDIAN_DISTANCE

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict of numbers and tuples (loads with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DinoConfig:
        """Inverse of `as_dict` (lists become tuples again)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def sized_for(self, n_patches: int) -> DinoConfig:
        """This recipe with out_dim 0 replaced by `head_out_dim` of ``n_patches``."""
        if self.out_dim:
            return self
        return dataclasses.replace(self, out_dim=head_out_dim(self, n_patches))


FINETUNE = DinoConfig()
SCRATCH = DinoConfig(
    out_dim=0,
    norm_last_layer=True,
    teacher_temp_end=0.07,
    teacher_temp_warmup_epochs=30,
    base_lr=5e-4,
    warmup_epochs=10,
    clip_grad=3.0,
)
RECIPES = {"finetune": FINETUNE, "scratch": SCRATCH}
CENTERINGS = ("center", "sinkhorn")
MAX_OUT_DIM = 65536  # DINO's ImageNet head


def default_recipe(init: object) -> str:
    """``finetune`` when training starts from weights, ``scratch`` from a random init."""
    return "scratch" if init is None else "finetune"


def head_out_dim(config: DinoConfig, n_patches: int) -> int:
    """The power of two nearest n_patches / patches_per_output, in [min_out_dim, 65536]."""
    wanted = max(n_patches / config.patches_per_output, 1.0)
    return int(min(max(2 ** round(math.log2(wanted)), config.min_out_dim), MAX_OUT_DIM))


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

    The last layer starts with unit-norm rows, as DINO's weight-normalised layer does, so the
    initial logits are cosines. With ``norm_last_layer`` its rows are normalised in every forward
    pass: DINO's weight normalisation with the gain frozen at 1 (its ``norm_last_layer=True``,
    the stable choice from scratch); without, it is a plain linear layer (SPEC 5).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        self.norm_last_layer = norm_last_layer
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
        weight = self.last_layer.weight
        if self.norm_last_layer:
            weight = F.normalize(weight, dim=1)
        return F.linear(F.normalize(self.mlp(x), dim=-1), weight)


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
        return self.head(self.class_tokens(views))

    def class_tokens(self, views: Sequence[Tensor]) -> Tensor:
        """2 + n views of B patches -> [(2 + n) * B, embed_dim] backbone features, view-major."""
        device = self.backbone.cls_token.device
        features = []
        for _size, group in itertools.groupby(views, key=lambda view: view.shape[-1]):
            x = torch.cat(list(group)).to(device, non_blocking=True)
            x = (x.float() / 255).expand(-1, 3, -1, -1)
            features.append(self.backbone.forward_features(x)[:, 0])
        return torch.cat(features)


def build_dino(
    arch: str,
    img_size: int,
    config: DinoConfig,
    init: str | Path | None = None,
    seed: int = 0,
) -> tuple[DinoNet, DinoNet]:
    """Student and teacher for a timm ViT: the teacher starts as a copy of the student.

    ``config.out_dim`` must be set (a recipe with out_dim 0 goes through `DinoConfig.sized_for`).

    The backbone takes any crop size (timm's ``dynamic_img_size`` resamples the position
    embedding, as DINO's ``interpolate_pos_encoding``), has drop path ``config.drop_path`` (the
    teacher runs in eval mode, so without it), and is initialised from ``init`` (timm / DINO /
    clanet-ssl file, via the encoder's loader) or from a random init seeded with ``seed`` (the
    global RNG is left as it was). Raises ValueError for an unknown arch or one without a class
    token, CheckpointError for a bad ``init`` file.
    """
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r}")
    if config.out_dim < 1:
        raise ValueError(f"out_dim {config.out_dim}: size the head first (DinoConfig.sized_for)")
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
            backbone.embed_dim,
            config.out_dim,
            config.hidden_dim,
            config.bottleneck_dim,
            config.norm_last_layer,
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
    ``-sum_k q_k log p_k`` with ``q`` = `teacher_targets` and ``p = softmax(student_s /
    student_temp)``, averaged over the batch, then over the 2 x (2 + n_local) - 2 pairs. The
    teacher temperature is an argument (it follows a schedule). The centre is a buffer (saved
    with the state dict), moved by `update_center` after each step. With ``centering =
    "sinkhorn"`` the targets are `sinkhorn_knopp` of the batch's teacher outputs instead (DINOv2;
    the centre is still kept, unused).
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        student_temp: float,
        center_momentum: float,
        centering: str = "center",
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering {centering!r} is not one of {', '.join(CENTERINGS)}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_targets(self, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        """The teacher's targets over the batch: ``softmax((teacher_out - center) / temp)``, or
        with Sinkhorn-Knopp centering `sinkhorn_knopp` of ``teacher_out``."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_out, teacher_temp, self.sinkhorn_iterations)
        return F.softmax((teacher_out - self.center) / teacher_temp, dim=-1).detach()

    def forward(self, student_out: Tensor, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        """student_out [(2 + n) * B, D] and teacher_out [2 * B, D], view-major -> scalar loss."""
        n_views = student_out.shape[0] // (teacher_out.shape[0] // N_GLOBAL)
        log_p = F.log_softmax(student_out / self.student_temp, dim=-1).chunk(n_views)
        q = self.teacher_targets(teacher_out, teacher_temp)
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
    """The DINO loss with the recipe's student temperature, centre momentum and centering."""
    return DinoLoss(
        config.out_dim,
        config.student_temp,
        config.center_momentum,
        config.centering,
        config.sinkhorn_iterations,
    )


# --- schedules, optimiser, one step ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScheduleValues:
    """Learning rate, weight decay, teacher momentum and teacher temperature used by one step."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float


def cosine(start: float, end: float, step: int, total_steps: int) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (DINO's schedules)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def warmup_steps(
    warmup_epochs: float, config: DinoConfig, steps_per_epoch: int, epochs: int
) -> int:
    """Steps of a warm-up of ``warmup_epochs`` DINO epochs in a run of ``epochs`` epochs.

    DINO states its warm-ups for reference_epochs (100) epochs; a shorter run shrinks them in
    proportion: ``round(warmup_epochs x min(1, epochs / reference_epochs) x steps_per_epoch)``.
    """
    scale = min(1.0, epochs / config.reference_epochs)
    return round(warmup_epochs * scale * steps_per_epoch)


def schedule_at(
    config: DinoConfig, batch_size: int, step: int, steps_per_epoch: int, epochs: int
) -> ScheduleValues:
    """The recipe's schedules at global step ``step`` of a run of ``epochs`` x ``steps_per_epoch``.

    lr: linear warm-up over `warmup_steps` (base_lr x batch / 256 x (step + 1) / warm-up steps),
    then a cosine to min_lr over the remaining steps (DINO's ``cosine_scheduler``; without a
    warm-up, SPEC 5's plain cosine); weight decay: cosine weight_decay_start -> weight_decay_end
    and teacher momentum: cosine momentum_start -> momentum_end over the run; teacher temperature:
    linear teacher_temp -> teacher_temp_end over its warm-up, then constant (DINO warms it up per
    epoch; per step here, so short runs warm up too).
    """
    total = steps_per_epoch * epochs
    peak = config.base_lr * batch_size / 256
    warm = min(warmup_steps(config.warmup_epochs, config, steps_per_epoch, epochs), total - 1)
    if step < warm:
        lr = peak * (step + 1) / warm
    else:
        lr = cosine(peak, config.min_lr, step - warm, total - warm)
    warm_temp = warmup_steps(config.teacher_temp_warmup_epochs, config, steps_per_epoch, epochs)
    progress = min(1.0, step / warm_temp) if warm_temp else 1.0
    return ScheduleValues(
        lr=lr,
        weight_decay=cosine(config.weight_decay_start, config.weight_decay_end, step, total),
        momentum=cosine(config.momentum_start, config.momentum_end, step, total),
        teacher_temp=config.teacher_temp
        + (config.teacher_temp_end - config.teacher_temp) * progress,
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


@torch.no_grad()
def clip_gradients(module: nn.Module, max_norm: float) -> None:
    """Scale every parameter's gradient down to L2 norm <= ``max_norm``, tensor by tensor.

    DINO's ``utils.clip_gradients`` (per parameter tensor, not one global norm).
    """
    for param in module.parameters():
        if param.grad is not None:
            scale = max_norm / (param.grad.norm() + 1e-6)
            if scale < 1:
                param.grad.mul_(scale)


def train_step(
    student: DinoNet,
    teacher: DinoNet,
    loss_fn: DinoLoss,
    optimizer: torch.optim.Optimizer,
    views: Sequence[Tensor],
    values: ScheduleValues,
    freeze_last_layer: bool,
    clip_grad: float = 0.0,
    koleo_weight: float = 0.0,
) -> float:
    """One DINO step on the views of one batch; returns the loss.

    Sets lr / weight decay, runs the teacher on the global views and the student on all views
    (adding ``koleo_weight`` x `koleo_loss` of the student's class tokens of each global view,
    DINOv2's sum over the views, when ``koleo_weight`` > 0), clips the gradients
    (`clip_gradients`, when ``clip_grad`` > 0), steps AdamW (the head's last
    layer gets no update while ``freeze_last_layer``), then moves the teacher (EMA with
    ``values.momentum``) and the centre.
    """
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = values.lr
        if i == 0:
            group["weight_decay"] = values.weight_decay
    with torch.no_grad():
        teacher_out = teacher(views[:N_GLOBAL])
    tokens = student.class_tokens(views)
    loss = loss_fn(student.head(tokens), teacher_out, values.teacher_temp)
    if koleo_weight > 0:
        global_tokens = tokens[: teacher_out.shape[0]].chunk(N_GLOBAL)
        loss = loss + koleo_weight * sum(koleo_loss(view) for view in global_tokens)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad > 0:
        clip_gradients(student, clip_grad)
    if freeze_last_layer:
        for param in student.head.last_layer.parameters():
            param.grad = None
    optimizer.step()
    ema_update(teacher, student, values.momentum)
    loss_fn.update_center(teacher_out)
    return loss.item()


# --- collapse probe --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CollapseProbe:
    """The teacher after one epoch, on a fixed set of stored patches (no augmentation).

    teacher_entropy: mean per-patch entropy (nats) of the teacher's centred, sharpened softmax;
    batch_entropy: entropy of its mean over the probe set; max_entropy: ln(out_dim), both's value
    for uniform outputs; cosine_distance_median: median over random pairs of probe patches of the
    cosine distance between the teacher backbone's features (what ``encode`` stores), by
    `embedding_health`; reasons: why it counts as collapsed (`collapse_reasons`), empty when
    healthy.
    """

    epoch: int
    teacher_entropy: float
    batch_entropy: float
    max_entropy: float
    cosine_distance_median: float
    reasons: tuple[str, ...] = ()

    @property
    def collapsed(self) -> bool:
        return bool(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "reasons": list(self.reasons),
            "collapsed": self.collapsed,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CollapseProbe:
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in fields}
        return cls(**{**kept, "reasons": tuple(kept.get("reasons", ()))})


def entropy(p: Tensor) -> Tensor:
    """Shannon entropy in nats along the last axis (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


@torch.no_grad()
def probe_teacher(
    teacher: DinoNet,
    loss_fn: DinoLoss,
    patches: Tensor,
    teacher_temp: float,
    n_blocks: int,
    epoch: int,
) -> CollapseProbe:
    """Measure the teacher on grey uint8 patches [N, S, S] (`CollapseProbe`, no reasons yet).

    One backbone pass gives the encoder's feature (the class token of the last ``n_blocks``
    blocks after the final LayerNorm, SPEC 4) and the head's input (the last of them, the
    backbone's ``forward_features`` class token).
    """
    backbone = teacher.backbone
    config = EncoderConfig(backbone.pretrained_cfg["architecture"], patches.shape[-1], n_blocks)
    features = PatchEncoder(backbone, config, "teacher", "teacher")(patches)
    logits = teacher.head(features[:, -backbone.embed_dim :])
    q = loss_fn.teacher_targets(logits, teacher_temp)
    return CollapseProbe(
        epoch=epoch,
        teacher_entropy=float(entropy(q).mean()),
        batch_entropy=float(entropy(q.mean(dim=0))),
        max_entropy=math.log(q.shape[-1]),
        cosine_distance_median=embedding_health(features.cpu().numpy()).cosine_distance_median,
    )


def collapse_reasons(probe: CollapseProbe, config: DinoConfig) -> tuple[str, ...]:
    """Which of the recipe's collapse rules ``probe`` breaks (see `DinoConfig`), as text."""
    reasons, top = [], probe.max_entropy
    if probe.teacher_entropy >= config.collapse_uniform * top:
        reasons.append(
            f"uniform teacher: entropy per patch {probe.teacher_entropy:.3f} >= "
            f"{config.collapse_uniform} x ln({round(math.exp(top))}) = "
            f"{config.collapse_uniform * top:.3f}"
        )
    if probe.batch_entropy <= config.collapse_one_hot * top:
        reasons.append(
            f"one-dimension teacher: entropy of the mean output {probe.batch_entropy:.3f} <= "
            f"{config.collapse_one_hot} x ln({round(math.exp(top))}) = "
            f"{config.collapse_one_hot * top:.3f}"
        )
    if probe.cosine_distance_median <= config.collapse_spread:
        reasons.append(
            f"no spread: median cosine distance of the features "
            f"{probe.cosine_distance_median:.4f} <= {config.collapse_spread}"
        )
    return tuple(reasons)
