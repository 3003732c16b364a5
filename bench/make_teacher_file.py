#!/usr/bin/env python3
"""Write a randomly initialised ViT teacher file in the official key layout (weights cannot be downloaded here).

    .venv/bin/python bench/make_teacher_file.py dinov3_vits16 /tmp/dinov3_vits16_random.pth
    .venv/bin/python bench/make_teacher_file.py vit_tiny /tmp/vitt_distill_random.pt

DINOv3 files are produced the way tests/distill/test_vit_teachers.py checks the loader: a Hugging Face
``DINOv3ViTModel`` of the same shape (random init) mapped to the official layout by
``hf_dinov3_to_official`` (plus the ``mask_token`` the official files carry). ViT-Tiny files are
UHD's own module's state_dict under DEIMv2's ``_model.`` prefix. The features are meaningless: these
files exercise loading, shapes and cost (bench/teacher_cost.py, the distillation presets), not accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from uhd_core.distill.vit import VIT_TEACHER_ARCHS, build_vit_teacher, hf_dinov3_to_official


def official_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    spec = VIT_TEACHER_ARCHS[arch]
    torch.manual_seed(seed)
    if spec.storage_tokens == 0:  # ViT-Tiny (DEIMv2 layout)
        return {f"_model.{k}": v for k, v in build_vit_teacher(arch).state_dict().items()}
    import transformers  # dev dependency

    cfg = transformers.DINOv3ViTConfig(
        hidden_size=spec.dim, intermediate_size=int(spec.dim * spec.mlp_ratio), num_hidden_layers=spec.depth,
        num_attention_heads=spec.heads, num_register_tokens=spec.storage_tokens, layer_norm_eps=spec.ln_eps,
        rope_theta=spec.rope_base, patch_size=spec.patch_size, query_bias=True, key_bias=False, value_bias=True,
    )
    state = hf_dinov3_to_official(transformers.DINOv3ViTModel(cfg).state_dict(), num_heads=spec.heads)
    return {**state, "mask_token": torch.zeros(1, spec.dim)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(VIT_TEACHER_ARCHS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; not overwriting it", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(args.arch, args.seed), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, random {args.arch} in the official layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
