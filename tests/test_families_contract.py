"""The contract every registered family x head keeps (generated from the registries, so a new family
or head is tested without editing this file): it trains one step with finite losses and a gradient for
every parameter, exports with and without the merged post-process, and ONNX Runtime matches PyTorch."""

from __future__ import annotations

import math

import pytest
import torch

from family_cases import family_head_cases, randomized, smoke_overrides
from uhd_core.config import build_config, check_implemented
from uhd_core.export.onnx_export import export_onnx, read_metadata, verify_onnx
from uhd_core.models.detector import build_detector

CASES = family_head_cases()
TOL = 1e-4


def test_the_built_in_families_are_generated():
    assert {"cnn-centernet", "cnn-anchor", "transformer-detr"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_one_training_step_is_finite_and_reaches_every_parameter(case):
    cfg = build_config(None, {**smoke_overrides(case), "img_size": "64x64"})
    check_implemented(cfg)
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    assert cfg.head_name == case.split("-", 1)[1]
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.4], [0.2, 0.3, 0.1, 0.2]], [[0.7, 0.6, 0.2, 0.5], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 0], [0, -1]])  # -1 = padding
    outputs = model(images)
    targets = model.head.build_targets(boxes, labels, model.head.output_hw(outputs))
    losses = model.head.loss(outputs, targets)
    assert {"loss", *model.head.loss_terms} <= set(losses)
    assert all(math.isfinite(float(v.detach())) for v in losses.values()), losses
    losses["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("merged", [False, True], ids=["raw", "merged"])
@pytest.mark.parametrize("case", CASES)
def test_exports_and_onnx_runtime_matches_pytorch(case, merged, tmp_path):
    model, cfg = randomized(case)
    report = export_onnx(model, cfg, tmp_path / "m.onnx", merge_postprocess=merged, dynamic=True, topk=20)
    meta = read_metadata(report.path)
    assert meta["merged"] is merged and meta["config"] == cfg.model_dump(mode="json")
    names = ["detections"] if merged else list(model.head.output_names or meta["outputs"])
    assert list(report.outputs) == names
    g = torch.Generator().manual_seed(1)
    diffs = verify_onnx(model, report.path, [torch.rand(1, 3, 64, 64, generator=g),
                                             torch.rand(2, 3, 96, 128, generator=g)], tol=TOL)
    assert list(diffs) == names and all(d < TOL for d in diffs.values()), diffs
