"""Frozen ViT teachers for feature distillation: DINOv3 ViT-S/16, ViT-B/16 and DEIMv2's ViT-Tiny.

Each is a faithful re-implementation of the official forward pass at inference (eval) time, built so
that the official checkpoint files load strictly into it by their own key names:

* DINOv3 (``dinov3_vits16``, ``dinov3_vitb16``): tokens [CLS, 4 storage tokens, H*W patches], no absolute
  position embedding, 2-D RoPE on the patch tokens' q/k only, a qkv bias multiplied by ``bias_mask``
  (zero over the K third), LayerScale, a final LayerNorm over all tokens.
* ViT-Tiny (``vit_tiny``, DEIMv2's DINOv3-distilled ``vitt_distill.pt``): [CLS, patches], the same RoPE,
  plain qkv bias, no LayerScale, no final norm (its feature map is the last block's patch tokens).

The module takes RGB float images in 0..1 and applies the ImageNet mean/std itself. The RoPE
coordinate augmentations (shift/jitter/rescale) of DINOv3 training are never applied: a teacher's
features must not depend on the train/eval flag.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.errors import CheckpointError, ConfigError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTTeacherSpec:
    """Shape of one ViT teacher; ``swiglu_hidden > 0`` swaps fc1/GELU/fc2 for SwiGLU w1,w2,w3 of that width."""

    dim: int
    depth: int
    heads: int
    storage_tokens: int
    layerscale: bool
    ln_eps: float
    final_norm: bool
    official_file: str
    mask_k_bias: bool  # qkv carries a ``bias_mask`` buffer (DINOv3)
    patch_size: int = 16
    mlp_ratio: float = 4.0
    swiglu_hidden: int = 0
    rope_base: float = 100.0


VIT_TEACHER_ARCHS: dict[str, ViTTeacherSpec] = {
    "dinov3_vits16": ViTTeacherSpec(384, 12, 6, 4, True, 1e-5, True,
                                    "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", mask_k_bias=True),
    "dinov3_vitb16": ViTTeacherSpec(768, 12, 12, 4, True, 1e-5, True,
                                    "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", mask_k_bias=True),
    "vit_tiny": ViTTeacherSpec(192, 12, 3, 0, False, 1e-6, False, "vitt_distill.pt", mask_k_bias=False),
}

#: wrappers a teacher state_dict may sit under, and key prefixes that may precede its own names
_WRAPPERS = ("model", "state_dict", "teacher")
_PREFIXES = ("module", "backbone", "_model", "model", "teacher")
#: Keys outside these namespaces (mask_token, a DINO head, cls_norm/local_cls_norm of untied-norm variants,
#: other parts of a detector) do not touch the patch features: reported as unexpected, then ignored.
#: An unexpected key inside them (an extra block, storage tokens on a CLS-only model, a final norm the
#: architecture lacks) means a different architecture and is an error.
_STRUCTURAL = re.compile(r"^(blocks\.|patch_embed\.|rope_embed\.|norm\.|cls_token$|storage_tokens$)")


class _Rope(nn.Module):
    """2-D RoPE; ``periods`` (head_dim/4,) is a persistent buffer in the official checkpoints."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim % 4 == 0, got {head_dim}")
        i = torch.arange(head_dim // 4, dtype=torch.float32)
        self.register_buffer("periods", base ** (2 * i / (head_dim // 2)))

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (sin, cos), each (h*w, head_dim) in float32."""
        dd = {"device": self.periods.device, "dtype": torch.float32}
        # Patch centres, each axis normalised to [-1, 1] on its own ("separate"), row-major (ij) order.
        ys = torch.arange(0.5, h, **dd) / h * 2 - 1
        xs = torch.arange(0.5, w, **dd) / w * 2 - 1
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)  # (h*w, 2)
        angles = 2 * math.pi * coords[:, :, None] / self.periods.float()[None, None, :]  # (h*w, 2, hd/4)
        angles = angles.flatten(1, 2).tile(2)  # [y | x] angles, then tiled twice -> (h*w, head_dim)
        return torch.sin(angles), torch.cos(angles)


def _apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, prefix: int) -> torch.Tensor:
    """x: (B, heads, N, hd); rotates the patch tokens x[:, :, prefix:] only (CLS/storage tokens have no position)."""
    pre, pat = x[:, :, :prefix], x[:, :, prefix:].float()  # rotation in float32, as the official rope dtype
    x1, x2 = pat.chunk(2, dim=-1)
    pat = pat * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((pre, pat.to(x.dtype)), dim=2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, mask_k_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mask_k_bias = mask_k_bias
        if mask_k_bias:
            # DINOv3 trains with a K bias that is always multiplied by zero; the checkpoint holds the mask.
            mask = torch.ones(3 * dim)
            mask[dim:2 * dim] = 0
            self.qkv.register_buffer("bias_mask", mask)

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, prefix: int) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        bias = self.qkv.bias * self.qkv.bias_mask.to(x.dtype) if self.mask_k_bias else self.qkv.bias
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, hd)
        q, k = _apply_rope(q, sin, cos, prefix), _apply_rope(k, sin, cos, prefix)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as nn.GELU() in the official code


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class _Block(nn.Module):
    def __init__(self, s: ViTTeacherSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(s.dim, eps=s.ln_eps)
        self.attn = _Attention(s.dim, s.heads, s.mask_k_bias)
        self.ls1 = _LayerScale(s.dim) if s.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(s.dim, eps=s.ln_eps)
        self.mlp = _SwiGLU(s.dim, s.swiglu_hidden) if s.swiglu_hidden else _Mlp(s.dim, int(s.dim * s.mlp_ratio))
        self.ls2 = _LayerScale(s.dim) if s.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, prefix: int) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), sin, cos, prefix))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTTeacher(nn.Module):
    """A ViT teacher; ``forward(images (B, 3, H, W) RGB 0..1) -> patch features (B, D, H/16, W/16)``."""

    def __init__(self, spec: ViTTeacherSpec) -> None:
        super().__init__()
        self.spec = spec
        self.out_channels = spec.dim
        self.patch_size = spec.patch_size
        self.num_prefix_tokens = 1 + spec.storage_tokens
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, spec.dim, spec.patch_size, stride=spec.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, spec.dim) * 0.02)
        if spec.storage_tokens:
            self.storage_tokens = nn.Parameter(torch.randn(1, spec.storage_tokens, spec.dim) * 0.02)
        self.rope_embed = _Rope(spec.dim // spec.heads, spec.rope_base)
        self.blocks = nn.ModuleList(_Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.dim, eps=spec.ln_eps) if spec.final_norm else None
        # Non-persistent: not part of any checkpoint.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) float RGB in 0..1, H and W multiples of 16 -> (B, D, H/16, W/16)."""
        p = self.patch_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % p or images.shape[3] % p:
            raise ValueError(f"expected (B, 3, H, W) images with H, W multiples of {p}, got {tuple(images.shape)}")
        x = self.patch_embed.proj((images - self.mean) / self.std)  # (B, D, h, w)
        b, d, h, w = x.shape
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.spec.storage_tokens:
            prefix.append(self.storage_tokens.expand(b, -1, -1))
        x = torch.cat([*prefix, x.flatten(2).transpose(1, 2)], dim=1)  # (B, prefix + h*w, D)
        sin, cos = self.rope_embed(h, w)
        for blk in self.blocks:
            x = blk(x, sin, cos, self.num_prefix_tokens)
        if self.norm is not None:
            x = self.norm(x)
        return x[:, self.num_prefix_tokens:].transpose(1, 2).reshape(b, d, h, w)


def _spec(arch: str | ViTTeacherSpec) -> tuple[str, ViTTeacherSpec]:
    if isinstance(arch, ViTTeacherSpec):
        return "custom", arch
    if arch not in VIT_TEACHER_ARCHS:
        raise ConfigError(f"unknown ViT teacher {arch!r}; known: {', '.join(VIT_TEACHER_ARCHS)}")
    return arch, VIT_TEACHER_ARCHS[arch]


def build_vit_teacher(arch: str | ViTTeacherSpec) -> ViTTeacher:
    """A randomly initialised teacher of a known arch name (or an explicit spec, e.g. a small test shape)."""
    return ViTTeacher(_spec(arch)[1])


@dataclass
class TeacherLoadReport:
    """What load_vit_teacher matched: key names, and ``"key: file (shape) vs model (shape)"`` strings."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    """{"model"|"state_dict"|"teacher": sd, ...} (nested any number of times) -> the tensors of sd."""
    # A state_dict maps names to tensors, so a wrapper name holding a dict is always a wrapper.
    while isinstance(obj, dict) and (inner := next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)),
                                                   None)) is not None:
        obj = inner
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _strip_prefix(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Strips the chain of known prefixes (e.g. ``module.backbone.``) matching the most keys (longest on ties)."""
    candidates = {""}
    for k in sd:
        parts, p = k.split("."), ""
        for part in parts[:-1]:
            if part not in _PREFIXES:
                break
            p += part + "."
            candidates.add(p)
    score = {p: sum(k.startswith(p) and k[len(p):] in expected for k in sd) for p in candidates}
    best = max(candidates, key=lambda p: (score[p], len(p)))
    other = {k: v for k, v in sd.items() if not k.startswith(best)}  # kept as they are: reported as unexpected
    return {**other, **{k[len(best):]: v for k, v in sd.items() if k.startswith(best)}}


def load_vit_teacher(arch: str | ViTTeacherSpec, path: str | Path) -> tuple[ViTTeacher, TeacherLoadReport]:
    """Loads a teacher checkpoint strictly; -> (frozen teacher in eval mode, report).

    Read with ``torch.load(weights_only=True)``. A missing key or a shape mismatch (a file of another
    architecture) raises CheckpointError; harmless extras (mask_token, heads, ...) are only reported.
    SwiGLU MLP weights (``mlp.w1/w2/w3``) are detected from the file and take the MLP's place.
    """
    name, spec = _spec(arch)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{name} teacher weights not found at {path}: obtain the official file "
                              f"{spec.official_file} and pass its path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        first = first_line(exc)
        raise CheckpointError(f"{path} cannot be loaded safely (weights_only=True): {first[:200]}") from None
    with torch.device("meta"):  # key names and shapes only: no memory, no random init
        sd = _strip_prefix(_unwrap(obj), set(ViTTeacher(spec).state_dict()))
        if "blocks.0.mlp.w1.weight" in sd:
            spec = dataclasses.replace(spec, swiglu_hidden=sd["blocks.0.mlp.w1.weight"].shape[0])
        expected = ViTTeacher(spec).state_dict()
    report = TeacherLoadReport(unexpected=sorted(k for k in sd if k not in expected))
    for k, ref in expected.items():
        if k not in sd:
            report.missing.append(k)
        elif sd[k].shape != ref.shape:
            report.shape_mismatched.append(f"{k}: file {tuple(sd[k].shape)} vs model {tuple(ref.shape)}")
        else:
            report.loaded.append(k)
    bad = report.missing + report.shape_mismatched + [k for k in report.unexpected if _STRUCTURAL.match(k)]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path} is not a {name} teacher (dim {spec.dim}, depth {spec.depth}): "
                              f"{'; '.join(bad[:3])}{more}")
    model = ViTTeacher(spec)
    model.load_state_dict({k: sd[k] for k in expected}, strict=True)
    model.eval().requires_grad_(False)
    return model, report


_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "storage_tokens",
           "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
           "norm.weight": "norm.weight", "norm.bias": "norm.bias"}


def hf_dinov3_to_official(hf_state_dict: dict[str, torch.Tensor], num_heads: int | None = None,
                          rope_theta: float = 100.0) -> dict[str, torch.Tensor]:
    """Maps a Hugging Face ``DINOv3ViTModel`` state_dict to the official DINOv3 key layout.

    The HF converter's mapping in reverse, kept here so users with HF-format DINOv3 files can use them
    too (torch.save the result, pass the file to load_vit_teacher): register_tokens -> storage_tokens,
    patch_embeddings -> patch_embed.proj, layer.i -> blocks.i, layer_scale{1,2}.lambda1 -> ls{1,2}.gamma,
    up/down_proj -> mlp.fc1/fc2 (gated: gate/up/down_proj -> mlp.w1/w2/w3), o_proj -> attn.proj, and
    q/k/v_proj (each (D, D)) stacked into ``attn.qkv`` (3D, D) with a ``bias_mask`` (3D,) of ones except
    zeros over the K third (HF usually has no K bias: zeros). mask_token (1, 1, D) becomes (1, D).
    HF's ``inv_freq`` buffer is not persistent, so ``rope_embed.periods`` (head_dim/4,) is ``1/inv_freq``
    when present, else computed from ``num_heads`` and ``rope_theta``; without either it is left out.
    """
    gated = any(".mlp.gate_proj." in k for k in hf_state_dict)
    mlp = ((("mlp.gate_proj.", "mlp.w1."), ("mlp.up_proj.", "mlp.w2."), ("mlp.down_proj.", "mlp.w3.")) if gated
           else (("mlp.up_proj.", "mlp.fc1."), ("mlp.down_proj.", "mlp.fc2.")))
    renames = (("norm1.", "norm1."), ("norm2.", "norm2."), ("attention.o_proj.", "attn.proj."),
               ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"), *mlp)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in hf_state_dict.items():
        if k in _HF_TOP:
            out[_HF_TOP[k]] = v
        elif k == "embeddings.mask_token":
            out["mask_token"] = v.reshape(1, -1)
        elif k.endswith("inv_freq"):
            out["rope_embed.periods"] = 1.0 / v
        elif m := re.match(r"^(?:model\.)?layer\.(\d+)\.(.+)$", k):
            i, rest = int(m.group(1)), m.group(2)
            if re.match(r"attention\.[qkv]_proj\.", rest):
                qkv.setdefault(i, {})[rest[len("attention."):]] = v
                continue
            for a, b in renames:
                if rest.startswith(a):
                    out[f"blocks.{i}.{b}{rest[len(a):]}"] = v
                    break
    for i, p in sorted(qkv.items()):
        w = p["q_proj.weight"]
        ones, zeros = w.new_ones(w.shape[0]), w.new_zeros(w.shape[0])
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([p[f"{n}_proj.weight"] for n in "qkv"])
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([p.get(f"{n}_proj.bias", zeros) for n in "qkv"])
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([ones, zeros, ones])
    if "rope_embed.periods" not in out and num_heads and "cls_token" in out:
        out["rope_embed.periods"] = _Rope(out["cls_token"].shape[-1] // num_heads, rope_theta).periods
    return out
