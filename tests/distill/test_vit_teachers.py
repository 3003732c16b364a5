"""ViT teachers (uhd_core.distill.vit): DINOv3 against Hugging Face's DINOv3ViTModel, ViT-Tiny against an
independent reference, and the loader's strictness (prefixes, wrappers, wrong architectures, missing files).

All models are built from configs with random weights; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from uhd_core.distill.vit import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VIT_TEACHER_ARCHS,
    ViTTeacherSpec,
    build_vit_teacher,
    hf_dinov3_to_official,
    load_vit_teacher,
)
from uhd_core.errors import CheckpointError, ConfigError

#: A small DINOv3-style shape: head_dim 16 -> 4 RoPE periods.
SMALL = ViTTeacherSpec(64, 2, 4, 4, True, 1e-5, True, "small.pth", mask_k_bias=True)
#: A small ViT-Tiny-style shape: CLS only, no LayerScale, no final norm, plain qkv bias.
TINY = ViTTeacherSpec(32, 2, 2, 0, False, 1e-6, False, "vitt_distill.pt", mask_k_bias=False)
SIZES = ((64, 64), (96, 128))
TOL = 1e-4


def _normalize(img: torch.Tensor) -> torch.Tensor:
    return (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (biases, LayerScale, norm affines), so every path shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            scale_like = name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "lambda1", "gamma"))
            p.copy_(1.0 + 0.1 * noise if scale_like else 0.1 * noise)


def _hf_model(seed: int, *, dim: int, heads: int, depth: int, inter: int, gated: bool = False):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=dim, intermediate_size=inter, num_hidden_layers=depth, num_attention_heads=heads,
        num_register_tokens=4, layer_norm_eps=1e-5, rope_theta=100.0, patch_size=16,
        use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
        query_bias=True, key_bias=False, value_bias=True,
        # The DINOv3 defaults: coordinate augmentation only as training-time rescale, never in eval.
        pos_embed_shift=None, pos_embed_jitter=None, pos_embed_rescale=2.0,
        attn_implementation="eager",
    )
    hf = transformers.DINOv3ViTModel(cfg)
    _randomize(hf, seed)
    return hf.eval(), cfg


def _hf_patch_features(hf, img: torch.Tensor) -> torch.Tensor:
    """HF last_hidden_state (after its final norm), patch tokens only -> (B, D, H/16, W/16)."""
    b, _, h, w = img.shape
    tokens = hf(pixel_values=_normalize(img)).last_hidden_state[:, 1 + hf.config.num_register_tokens:]
    return tokens.transpose(1, 2).reshape(b, -1, h // 16, w // 16)


def _compare_with_hf(hf, cfg, arch, tmp_path: Path) -> list[float]:
    official = hf_dinov3_to_official(hf.state_dict(), num_heads=cfg.num_attention_heads)
    path = tmp_path / "teacher.pth"
    torch.save(official, path)
    teacher, report = load_vit_teacher(arch, path)
    assert report.missing == [] and report.shape_mismatched == []
    assert report.unexpected == ["mask_token"]  # harmless: unused at inference
    diffs = []
    torch.manual_seed(1)
    for h, w in SIZES:
        img = torch.rand(2, 3, h, w)
        with torch.no_grad():
            ours, ref = teacher(img), _hf_patch_features(hf, img)
        assert ours.shape == ref.shape == (2, cfg.hidden_size, h // 16, w // 16)
        diffs.append((ours - ref).abs().max().item())
    assert max(diffs) < TOL, diffs
    return diffs


def test_hf_rope_settings_match_in_eval():
    hf, cfg = _hf_model(0, dim=64, heads=4, depth=1, inter=128)
    assert cfg.pos_embed_shift is None and cfg.pos_embed_jitter is None and cfg.rope_theta == 100.0
    teacher = build_vit_teacher(SMALL)
    for h, w in ((4, 4), (6, 8)):
        cos_hf, sin_hf = hf.rope_embeddings(torch.zeros(1, 3, 16 * h, 16 * w))
        sin, cos = teacher.rope_embed(h, w)
        assert torch.allclose(sin, sin_hf, atol=1e-6) and torch.allclose(cos, cos_hf, atol=1e-6)
    # periods = 100 ** (2i / (head_dim / 2)), i < head_dim / 4
    assert torch.allclose(teacher.rope_embed.periods, 100.0 ** (2 * torch.arange(4) / 8))


def test_small_dinov3_matches_hf(tmp_path):
    hf, cfg = _hf_model(0, dim=64, heads=4, depth=2, inter=256)
    diffs = _compare_with_hf(hf, cfg, SMALL, tmp_path)
    print(f"small DINOv3 max abs diff vs HF: {diffs}")


def test_comparison_is_sensitive_to_rope(tmp_path):
    """Negative control: wrong RoPE periods give features far from HF's, so the 1e-4 check means something."""
    hf, _ = _hf_model(0, dim=64, heads=4, depth=2, inter=256)
    official = hf_dinov3_to_official(hf.state_dict(), num_heads=4)
    official["rope_embed.periods"] = official["rope_embed.periods"] * 2
    torch.save(official, tmp_path / "t.pth")
    teacher, _ = load_vit_teacher(SMALL, tmp_path / "t.pth")
    img = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (teacher(img) - _hf_patch_features(hf, img)).abs().max() > 1e-2


@pytest.mark.slow
def test_vits16_matches_hf(tmp_path):
    hf, cfg = _hf_model(0, dim=384, heads=6, depth=12, inter=1536)
    diffs = _compare_with_hf(hf, cfg, "dinov3_vits16", tmp_path)
    print(f"ViT-S/16 max abs diff vs HF: {diffs}")


def test_swiglu_variant_matches_hf(tmp_path):
    hf, cfg = _hf_model(0, dim=64, heads=4, depth=2, inter=96, gated=True)
    official = hf_dinov3_to_official(hf.state_dict(), num_heads=4)
    assert "blocks.0.mlp.w3.weight" in official and "blocks.0.mlp.fc1.weight" not in official
    diffs = _compare_with_hf(hf, cfg, SMALL, tmp_path)
    print(f"SwiGLU max abs diff vs HF: {diffs}")
    teacher, report = load_vit_teacher(SMALL, tmp_path / "teacher.pth")
    assert "blocks.1.mlp.w2.weight" in report.loaded and teacher.spec.swiglu_hidden == 96


# ---------------------------------------------------------------- ViT-Tiny


def _tiny_reference(sd: dict[str, torch.Tensor], img: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """DEIMv2's ViT-Tiny forward written out directly: [CLS, patches], RoPE on patches, explicit softmax."""
    x = F.conv2d(_normalize(img), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    b, d, h, w = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    hd = d // heads
    ys, xs = (torch.arange(0.5, n) / n * 2 - 1 for n in (h, w))
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    periods = 100.0 ** (2 * torch.arange(hd // 4) / (hd // 2))
    angles = (2 * math.pi * coords[:, :, None] / periods).reshape(h * w, -1).repeat(1, 2)
    sin, cos = angles.sin(), angles.cos()

    def rope(t):  # t: (B, heads, N, hd); CLS (index 0) untouched
        p = t[:, :, 1:]
        rot = torch.cat([-p[..., hd // 2:], p[..., :hd // 2]], dim=-1)
        return torch.cat([t[:, :, :1], p * cos + rot * sin], dim=2)

    for i in range(sum(k.endswith("norm1.weight") for k in sd)):
        def g(name, i=i):
            return sd[f"blocks.{i}.{name}"]
        y = F.layer_norm(x, (d,), g("norm1.weight"), g("norm1.bias"), eps)
        q, k, v = (y @ g("attn.qkv.weight").T + g("attn.qkv.bias")).reshape(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        attn = (rope(q) @ rope(k).transpose(-2, -1) / math.sqrt(hd)).softmax(-1)
        x = x + (attn @ v).transpose(1, 2).reshape(b, -1, d) @ g("attn.proj.weight").T + g("attn.proj.bias")
        y = F.layer_norm(x, (d,), g("norm2.weight"), g("norm2.bias"), eps)
        y = F.gelu(y @ g("mlp.fc1.weight").T + g("mlp.fc1.bias"))
        x = x + y @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")
    return x[:, 1:].transpose(1, 2).reshape(b, d, h, w)


def test_vit_tiny_matches_reference(tmp_path):
    model = build_vit_teacher(TINY)
    _randomize(model, 3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert not any("storage" in k or "bias_mask" in k or k.startswith("norm.") or ".ls" in k for k in sd)
    torch.save({f"_model.{k}": v for k, v in sd.items()}, tmp_path / "vitt.pt")
    teacher, report = load_vit_teacher(TINY, tmp_path / "vitt.pt")
    assert report.unexpected == [] and teacher.num_prefix_tokens == 1
    for h, w in SIZES:
        img = torch.rand(2, 3, h, w)
        with torch.no_grad():
            diff = (teacher(img) - _tiny_reference(sd, img, TINY.heads, TINY.ln_eps)).abs().max().item()
        assert diff < TOL, diff


def test_vit_tiny_full_shape_loads_with_model_prefix(tmp_path):
    sd = build_vit_teacher("vit_tiny").state_dict()
    assert sd["rope_embed.periods"].shape == (16,) and sd["cls_token"].shape == (1, 1, 192)
    torch.save({f"_model.{k}": v for k, v in sd.items()}, tmp_path / "vitt_distill.pt")
    teacher, report = load_vit_teacher("vit_tiny", tmp_path / "vitt_distill.pt")
    assert report.missing == report.unexpected == report.shape_mismatched == []
    assert teacher.out_channels == 192 and teacher.patch_size == 16
    with torch.no_grad():
        assert teacher(torch.rand(2, 3, 64, 96)).shape == (2, 192, 4, 6)


# ---------------------------------------------------------------- loader


@pytest.mark.parametrize("wrap", [
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {f"backbone.{k}": v for k, v in sd.items()},
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": {f"module.backbone.{k}": v for k, v in sd.items()}, "step": torch.tensor(3)},
    lambda sd: {"teacher": {f"teacher.{k}": v for k, v in sd.items()}},
], ids=["module.", "backbone.", "model-wrapper", "state_dict+module.backbone.", "teacher-wrapper"])
def test_prefixes_and_wrappers(tmp_path, wrap):
    model = build_vit_teacher(SMALL)
    _randomize(model, 4)
    torch.save(wrap(model.state_dict()), tmp_path / "t.pth")
    teacher, report = load_vit_teacher(SMALL, tmp_path / "t.pth")
    assert report.missing == report.unexpected == [] and len(report.loaded) == len(model.state_dict())
    img = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(teacher(img), model(img))


def test_loaded_teacher_is_frozen_and_in_eval(tmp_path):
    torch.save(build_vit_teacher(SMALL).state_dict(), tmp_path / "t.pth")
    teacher, _ = load_vit_teacher(SMALL, tmp_path / "t.pth")
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_vitb_weights_declared_as_vits16_are_rejected(tmp_path):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_vit_teacher("dinov3_vitb16").state_dict().items()}
    # Stride-0 views keep the file tiny: torch.save stores the one-element storage.
    torch.save({k: torch.zeros(()).expand(s) for k, s in shapes.items()}, tmp_path / "vitb.pth")
    with pytest.raises(CheckpointError) as exc:
        load_vit_teacher("dinov3_vits16", tmp_path / "vitb.pth")
    msg = str(exc.value)
    assert "\n" not in msg and "vitb.pth" in msg and "dinov3_vits16" in msg
    assert "cls_token: file (1, 1, 768) vs model (1, 1, 384)" in msg


def test_structural_extra_keys_are_errors_harmless_ones_are_reported(tmp_path):
    sd = build_vit_teacher(SMALL).state_dict()
    torch.save({**sd, "mask_token": torch.zeros(1, 64), "head.weight": torch.zeros(2)}, tmp_path / "ok.pth")
    _, report = load_vit_teacher(SMALL, tmp_path / "ok.pth")
    assert report.unexpected == ["head.weight", "mask_token"]
    torch.save({**sd, "blocks.2.norm1.weight": torch.zeros(64)}, tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match="blocks.2.norm1.weight"):
        load_vit_teacher(SMALL, tmp_path / "deeper.pth")
    sd.pop("blocks.1.attn.qkv.bias_mask")
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="blocks.1.attn.qkv.bias_mask"):
        load_vit_teacher(SMALL, tmp_path / "missing.pth")


@pytest.mark.parametrize("arch", sorted(VIT_TEACHER_ARCHS))
def test_missing_file_names_the_official_file(tmp_path, arch):
    with pytest.raises(CheckpointError) as exc:
        load_vit_teacher(arch, tmp_path / "nope.pth")
    assert VIT_TEACHER_ARCHS[arch].official_file in str(exc.value) and "nope.pth" in str(exc.value)


def test_unknown_arch_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError) as exc:
        build_vit_teacher("dinov3_vitl16")
    assert all(name in str(exc.value) for name in VIT_TEACHER_ARCHS)
    with pytest.raises(ConfigError):
        load_vit_teacher("vit_small", tmp_path / "x.pth")


def test_k_bias_is_masked(tmp_path):
    model = build_vit_teacher(SMALL)
    _randomize(model, 5)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    d = SMALL.dim
    for i in range(SMALL.depth):
        sd[f"blocks.{i}.attn.qkv.bias"][d:2 * d] = torch.randn(d)
    zero_k = {k: v.clone() for k, v in sd.items()}
    unmasked = {k: v.clone() for k, v in sd.items()}
    for i in range(SMALL.depth):
        zero_k[f"blocks.{i}.attn.qkv.bias"][d:2 * d] = 0
        unmasked[f"blocks.{i}.attn.qkv.bias_mask"].fill_(1)
    outs = []
    img = torch.rand(1, 3, 64, 64)
    for name, state in (("masked", sd), ("zero_k", zero_k), ("unmasked", unmasked)):
        torch.save(state, tmp_path / f"{name}.pth")
        with torch.no_grad():
            outs.append(load_vit_teacher(SMALL, tmp_path / f"{name}.pth")[0](img))
    assert (outs[0] - outs[1]).abs().max() < 1e-6
    # With RoPE a K bias is rotated per position, so it would change the output if it were not masked.
    assert (outs[0] - outs[2]).abs().max() > 1e-3


def test_input_size_must_be_a_multiple_of_16():
    teacher = build_vit_teacher(TINY)
    with pytest.raises(ValueError, match="multiples of 16"):
        teacher(torch.rand(1, 3, 64, 72))
