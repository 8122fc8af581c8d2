"""The patch encoder (SPEC 4): the feature, the three checkpoint formats, model_id, random init."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import Tensor, nn

from clanet_store.models.checkpoint import CheckpointError, ssl_checkpoint, ssl_checkpoint_backbone
from clanet_store.models.device import inference_context, select_device
from clanet_store.models.encoder import EncoderConfig, PatchEncoder, build_encoder

S8 = EncoderConfig()
TINY = EncoderConfig(arch="vit_tiny_patch16_224")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def seeded_vit(arch: str, seed: int, **kwargs: object) -> nn.Module:
    """A timm model from a seeded random init, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False, **kwargs).eval()


def reference_features(model: nn.Module, patches: Tensor, normalize: bool = False) -> Tensor:
    """SPEC 4 written out: forward_intermediates on the grey patch repeated to 3 channels."""
    x = (patches.float() / 255).unsqueeze(1).repeat(1, 3, 1, 1)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            1, 3, 1, 1
        )
    with torch.inference_mode():
        layers = model.forward_intermediates(
            x,
            indices=4,
            return_prefix_tokens=True,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
    return torch.cat([prefix[:, 0] for _tokens, prefix in layers], dim=1)


def embed(encoder: PatchEncoder, patches: Tensor) -> Tensor:
    with inference_context(encoder.device):
        return encoder(patches)


@pytest.fixture(scope="module")
def patches() -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 112, 112), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def from_timm(checkpoints: dict[str, Path]) -> PatchEncoder:
    return build_encoder(S8, checkpoints["timm"])


@pytest.fixture(scope="module")
def random_s8() -> PatchEncoder:
    return build_encoder(S8, seed=0)


@pytest.fixture(scope="module")
def source() -> nn.Module:
    """The weights both files hold: a ViT-S/8 at 224 px (785-token pos_embed) with a classifier."""
    return seeded_vit("vit_small_patch8_224", seed=7)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, source: nn.Module) -> dict[str, Path]:
    """The same weights as a plain timm state dict and as an original DINO training checkpoint."""
    root = tmp_path_factory.mktemp("checkpoints")
    state = source.state_dict()
    assert state["pos_embed"].shape == (1, 785, 384)
    backbone = {f"module.backbone.{k}": v for k, v in state.items() if not k.startswith("head.")}
    dino_head = {
        "module.head.mlp.0.weight": torch.zeros(2048, 384),
        "module.head.last_layer.weight": torch.zeros(256, 256),
    }
    # The student differs from the teacher, so loading the wrong one shows.
    student = {k: v + 1 for k, v in backbone.items()}
    files = {"timm": root / "vit_s8_timm.pth", "dino": root / "dino_checkpoint.pth"}
    torch.save(state, files["timm"])
    torch.save(
        {
            "teacher": backbone | dino_head,
            "student": student | dino_head,
            "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=8),
        },
        files["dino"],
    )
    return files


@pytest.mark.parametrize(("config", "dim"), [(S8, 1536), (TINY, 768)], ids=["vit-s8", "vit-ti16"])
def test_embedding_dimension(config: EncoderConfig, dim: int, patches: Tensor) -> None:
    encoder = build_encoder(config)
    features = embed(encoder, patches)
    assert encoder.embedding_dim == dim
    assert features.shape == (2, dim)
    assert features.dtype == torch.float32


@pytest.mark.parametrize("normalize", [False, True])
def test_equals_direct_forward_intermediates(
    normalize: bool, random_s8: PatchEncoder, patches: Tensor
) -> None:
    encoder = build_encoder(EncoderConfig(normalize=True)) if normalize else random_s8
    expected = reference_features(encoder.backbone, patches, normalize)
    torch.testing.assert_close(embed(encoder, patches), expected, atol=1e-5, rtol=0)


def test_feature_is_normed_class_token_of_last_four_blocks(
    random_s8: PatchEncoder, patches: Tensor
) -> None:
    """Independent of forward_intermediates: run the blocks by hand, in block order."""
    vit = random_s8.backbone
    with torch.inference_mode():
        grey = (patches.float() / 255)[:, None].repeat(1, 3, 1, 1)
        tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(grey)))
        classes = []
        for block in vit.blocks:
            tokens = block(tokens)
            classes.append(vit.norm(tokens)[:, 0])
    expected = torch.cat(classes[-4:], dim=1)
    torch.testing.assert_close(embed(random_s8, patches), expected, atol=1e-5, rtol=0)


def test_float_patches_in_unit_range_equal_uint8(random_s8: PatchEncoder, patches: Tensor) -> None:
    assert torch.equal(embed(random_s8, patches), embed(random_s8, patches.float() / 255))


def test_wrong_patch_shape_or_dtype_is_refused(random_s8: PatchEncoder) -> None:
    with pytest.raises(ValueError, match=r"\[N, 112, 112\]"):
        random_s8(torch.zeros(2, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="int32"):
        random_s8(torch.zeros(2, 112, 112, dtype=torch.int32))


def test_dino_and_timm_checkpoints_agree(
    checkpoints: dict[str, Path],
    from_timm: PatchEncoder,
    random_s8: PatchEncoder,
    source: nn.Module,
    patches: Tensor,
) -> None:
    from_dino = build_encoder(S8, checkpoints["dino"])
    assert (from_timm.weights_format, from_dino.weights_format) == ("timm", "dino")
    assert from_dino.weights_source == "dino_checkpoint.pth"
    assert not from_timm.random_init and not from_dino.random_init
    for encoder in (from_timm, from_dino):
        vit = encoder.backbone
        assert torch.equal(vit.blocks[11].mlp.fc2.weight, source.blocks[11].mlp.fc2.weight)
        assert vit.pos_embed.shape == (1, 197, 384)
        assert torch.equal(vit.pos_embed[:, 0], source.pos_embed[:, 0])
    assert torch.equal(embed(from_timm, patches), embed(from_dino, patches))
    assert from_timm.model_id == from_dino.model_id
    assert from_timm.model_id != random_s8.model_id


def test_own_ssl_checkpoint_loads(from_timm: PatchEncoder, tmp_path: Path, patches: Tensor) -> None:
    ckpt = ssl_checkpoint(from_timm.backbone.state_dict(), S8.arch, S8.img_size, epoch=3)
    path = tmp_path / "ssl.pth"
    torch.save(ckpt, path)
    from_ssl = build_encoder(S8, path)
    assert from_ssl.weights_format == "clanet-ssl"
    assert from_ssl.model_id == from_timm.model_id
    assert torch.equal(embed(from_ssl, patches), embed(from_timm, patches))
    assert ssl_checkpoint_backbone(ckpt).keys() == from_timm.backbone.state_dict().keys()
    with pytest.raises(CheckpointError, match="trained as vit_small_patch8_224"):
        build_encoder(TINY, path)
    with pytest.raises(ValueError, match="'teacher'"):
        ssl_checkpoint_backbone({k: v for k, v in ckpt.items() if k != "teacher"})


def test_random_init_is_deterministic_and_labelled(patches: Tensor) -> None:
    rng_before = torch.get_rng_state()
    first, again, other = (build_encoder(TINY, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert first.random_init and first.weights_source == "random-init(seed=0)"
    assert other.weights_source == "random-init(seed=1)"
    assert first.model_id == again.model_id != other.model_id
    assert torch.equal(embed(first, patches), embed(again, patches))
    assert not torch.allclose(embed(first, patches), embed(other, patches))


def test_normalize_changes_output_and_model_id(patches: Tensor) -> None:
    plain = build_encoder(TINY)
    normed = build_encoder(EncoderConfig(arch=TINY.arch, normalize=True))
    assert plain.model_id != normed.model_id
    assert not torch.allclose(embed(plain, patches), embed(normed, patches), atol=1e-3)


def _tiny_state() -> dict[str, Tensor]:
    """The weights of build_encoder(TINY, seed=5)."""
    return seeded_vit(TINY.arch, seed=5, img_size=112, num_classes=0).state_dict()


@pytest.mark.parametrize(
    ("wrap", "fmt"),
    [
        (lambda state: state, "timm"),
        (lambda state: {"state_dict": state, "epoch": 9, "args": argparse.Namespace()}, "timm"),
        (lambda state: {"model": state}, "timm"),
        (
            lambda state: {"teacher": {f"backbone.{k}": v for k, v in state.items()}},
            "dino",
        ),
    ],
    ids=["plain", "timm-train", "deit", "dino-unwrapped-teacher"],
)
def test_checkpoint_wrappers_give_the_same_model(wrap, fmt: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(wrap(_tiny_state()), path)
    encoder = build_encoder(TINY, path)
    assert encoder.weights_format == fmt
    assert encoder.model_id == build_encoder(TINY, seed=5).model_id


BAD_CHECKPOINTS = {
    "garbage": (lambda path: path.write_bytes(b"not a checkpoint" * 40), "not a readable"),
    "empty": (lambda path: path.write_bytes(b""), "not a readable"),
    "unknown": (lambda path: torch.save({"epoch": 3}, path), "unknown checkpoint format"),
    "no-entries": (lambda path: torch.save({}, path), "no entries"),
    "other-format": (lambda path: torch.save({"format": "x"}, path), "not a clanet-ssl"),
    "missing-key": (
        lambda path: torch.save(
            {k: v for k, v in _tiny_state().items() if k != "norm.weight"}, path
        ),
        "missing keys norm.weight",
    ),
    "unexpected-key": (
        lambda path: torch.save(_tiny_state() | {"extra.weight": torch.zeros(1)}, path),
        "unexpected keys extra.weight",
    ),
    "wrong-arch": (
        lambda path: torch.save(seeded_vit("vit_small_patch16_224", 0).state_dict(), path),
        r"wrong shapes blocks\.0\.attn\.proj\.bias \(384,\) != \(192,\)",
    ),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_names_file_and_reason(case: str, tmp_path: Path) -> None:
    write, reason = BAD_CHECKPOINTS[case]
    path = tmp_path / f"{case}.pth"
    write(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": .*" + reason):
        build_encoder(TINY, path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nope.pth")) + ": no such"):
        build_encoder(TINY, tmp_path / "nope.pth")


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA"):
        select_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        select_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_inference_context_on_cpu() -> None:
    with inference_context(torch.device("cpu")):
        assert torch.is_inference_mode_enabled()
        assert not torch.is_autocast_enabled("cuda")
    assert not torch.is_inference_mode_enabled()
