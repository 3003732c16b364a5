"""Feature distillation from a ViT teacher into the CNN: loss, adapter, teacher size, training, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from uhd_core.config import build_config
from uhd_core.distill.feature import (
    FeatureDistiller,
    build_feature_distiller,
    default_teacher_size,
    feature_distill_loss,
    student_geometry,
)
from uhd_core.distill.vit import build_vit_teacher
from uhd_core.engine.api import run_training
from uhd_core.engine.events import read_events
from uhd_core.models.detector import build_detector


@pytest.fixture(scope="module")
def vit_tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViT-Tiny checkpoint in DEIMv2's layout (keys under `_model.`), random weights."""
    torch.manual_seed(0)
    state = {f"_model.{k}": v for k, v in build_vit_teacher("vit_tiny").state_dict().items()}
    path = tmp_path_factory.mktemp("teachers") / "vitt_distill.pt"
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize("kind", ["l1", "mse", "cosine"])
def test_loss_is_zero_for_equal_directions_and_positive_otherwise(kind):
    t = torch.randn(2, 8, 4, 4)
    assert float(feature_distill_loss(3.0 * t, t, kind)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(feature_distill_loss(torch.randn(2, 8, 4, 4), t, kind)) > 0.01


def test_default_teacher_size_matches_the_student_grid():
    assert default_teacher_size((64, 64), 8) == (128, 128)  # 8x8 grid of 16-pixel patches
    assert default_teacher_size((64, 64), 16) == (64, 64)
    assert default_teacher_size((64, 96), 8) == (128, 192)


def test_student_geometry_reads_the_backbone():
    assert student_geometry(build_config("cnn_anchor_dino")) == (80, 8)  # width 64 x last-width-scale 1.25


def test_adapter_trains_and_teacher_stays_frozen():
    teacher = build_vit_teacher("vit_tiny").eval().requires_grad_(False)
    distiller = FeatureDistiller(teacher, 16, (128, 128), weight=2.0)
    features = torch.randn(2, 16, 8, 8, requires_grad=True)
    total, terms = distiller({}, features, torch.rand(2, 3, 128, 128), 0.5)
    assert float(total.detach()) == pytest.approx(2.0 * 0.5 * float(terms["distill_feat"]), rel=1e-5)
    total.backward()
    assert features.grad.abs().sum() > 0 and distiller.adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert [n for n, _ in distiller.named_parameters() if not n.startswith("teacher.")] == \
        ["adapter.weight", "adapter.bias"]
    assert set(distiller.student_side_state_dict()) == {"adapter.weight", "adapter.bias"}
    distiller.train()
    assert distiller.adapter.training and not teacher.training


def test_teacher_grid_is_resized_to_the_student_grid():
    """The original fed the 64x64 image to the teacher: a 4x4 grid, upsampled to the student's 8x8."""
    distiller = FeatureDistiller(build_vit_teacher("vit_tiny").eval(), 16, (64, 64), weight=1.0)
    total, _ = distiller({}, torch.randn(2, 16, 8, 8), torch.rand(2, 3, 64, 64), 1.0)
    assert torch.isfinite(total)


def test_builder_uses_the_default_size_and_the_override(vit_tiny_file):
    base = {"output_stride": 8, "teacher_backbone": str(vit_tiny_file), "teacher_backbone_arch": "vit_tiny",
            "distill_feat": 1.0}
    assert build_feature_distiller(build_config(None, base), torch.device("cpu")).teacher_img_size == (128, 128)
    override = build_config(None, {**base, "teacher_img_size": "64x64"})
    assert build_feature_distiller(override, torch.device("cpu")).teacher_img_size == (64, 64)


def _settings(tiny_yolo_dir: Path, runs: Path, teacher: Path, **extra):
    return {"image_dir": str(tiny_yolo_dir), "runs_dir": str(runs), "cnn_width": 8, "output_stride": 8,
            "batch_size": 16, "num_workers": 0, "lr": 0.01, "log_interval": 1, "seed": 0, "device": "cpu",
            "teacher_backbone": str(teacher), "teacher_backbone_arch": "vit_tiny", "distill_feat": 1.0, **extra}


def test_training_logs_distill_feat_and_checkpoints_the_adapter_only(tiny_yolo_dir, tmp_path, vit_tiny_file):
    result = run_training(None, _settings(tiny_yolo_dir, tmp_path, vit_tiny_file, epochs=2, exp_name="feat"),
                          tensorboard=False)
    events = read_events(result.run_dir / "events.jsonl")
    started = next(e for e in events if e["event"] == "RunStarted")
    assert started["loss_terms"] == ["loss", "hm", "off", "wh", "distill_feat"]
    steps = [e["losses"]["distill_feat"] for e in events if e["event"] == "StepEnded"]
    assert steps and all(v > 0 for v in steps)
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    assert set(ckpt["distiller"]) == {"adapter.weight", "adapter.bias"}
    student_keys = set(build_detector(build_config(None, {"cnn_width": 8, "output_stride": 8})).state_dict())
    assert set(ckpt["model"]) == student_keys  # no teacher, no adapter in the model
    # resume restores the adapter (and extends training)
    resumed = run_training(None, {**_settings(tiny_yolo_dir, tmp_path, vit_tiny_file), "epochs": 3,
                                  "resume": str(result.run_dir)}, tensorboard=False)
    assert resumed.epochs_done == 3


def test_anchor_student_with_amp_distils(tiny_yolo_dir, tmp_path, vit_tiny_file):
    """The original recipes distil into the anchor CNN with --use-amp (bf16 autocast on CPU)."""
    result = run_training(None, _settings(tiny_yolo_dir, tmp_path, vit_tiny_file, epochs=1, exp_name="anchor",
                                          use_anchor=True, auto_anchors=True, num_anchors=3, use_amp=True),
                          tensorboard=False)
    steps = [e["losses"] for e in read_events(result.run_dir / "events.jsonl") if e["event"] == "StepEnded"]
    assert steps and all(np.isfinite(s["distill_feat"]) and s["distill_feat"] > 0 for s in steps)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter (no onnxscript needed)
def test_onnx_of_a_distilled_student_equals_the_plain_student_export(tiny_yolo_dir, tmp_path, vit_tiny_file):
    """The adapter and teacher never reach an export: the distilled checkpoint's model exports to the
    same graph size and outputs as the same weights loaded into a student built without distillation."""
    onnxruntime = pytest.importorskip("onnxruntime")
    result = run_training(None, _settings(tiny_yolo_dir, tmp_path, vit_tiny_file, epochs=1, exp_name="onnx"),
                          tensorboard=False)
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    distilled_cfg = build_config(None, ckpt["config"])
    plain_cfg = build_config(None, {"cnn_width": 8, "output_stride": 8})
    x = torch.rand(1, 3, 64, 64)
    outputs = []
    for cfg, name in ((distilled_cfg, "distilled.onnx"), (plain_cfg, "plain.onnx")):
        model = build_detector(cfg).eval()
        model.load_state_dict(ckpt["model"])
        path = tmp_path / name
        torch.onnx.export(model, (x,), str(path), input_names=["images"], dynamo=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append((path.stat().st_size, session.run(None, {"images": x.numpy()})))
    (size_a, out_a), (size_b, out_b) = outputs
    assert size_a == size_b
    for a, b in zip(out_a, out_b, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
