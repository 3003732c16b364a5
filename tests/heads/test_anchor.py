"""AnchorHead: vectorized assignment, encode/decode round trip, loss, and a short training run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from uhd_core.checkpoint import load_checkpoint
from uhd_core.config import RunConfig, build_config
from uhd_core.engine.api import run_training
from uhd_core.errors import ConfigError
from uhd_core.heads.anchor import AnchorHead
from uhd_core.models.detector import build_detector

ANCHORS = [(0.1, 0.2), (0.3, 0.5), (0.6, 0.8)]


def _head(assign: str = "best", num_classes: int = 2, iou_loss: str = "giou") -> AnchorHead:
    torch.manual_seed(0)
    return AnchorHead(8, num_classes, ANCHORS, assign, iou_loss)


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


def _encode(head: AnchorHead, targets: dict[str, Any], fh: int, fw: int) -> dict[str, torch.Tensor]:
    """Raw outputs that decode exactly to the targets (inverse of the head's parametrisation)."""
    b = targets["idx"].shape[0]
    k, c = head.num_anchors, head.num_classes
    cells = torch.full((b, k * fh * fw, 5 + c), -20.0, dtype=torch.float64)
    for i in range(b):
        for j in torch.nonzero(targets["mask"][i]).flatten().tolist():
            row = int(targets["idx"][i, j])
            cx, cy, w, h = targets["box"][i, j].double().tolist()
            cell = row % (fh * fw)
            gx, gy = cell % fw, cell // fw
            aw, ah = head.anchors[row // (fh * fw)].double().tolist()
            ox, oy, sw, sh = cx - gx, cy - gy, w / (aw * fw), h / (ah * fh)
            if head.assign == "yolov5":
                t = _logit(torch.tensor([(ox + 0.5) / 2, (oy + 0.5) / 2, math.sqrt(sw) / 2, math.sqrt(sh) / 2],
                                        dtype=torch.float64))
            else:
                t = torch.cat([_logit(torch.tensor([ox, oy], dtype=torch.float64)),
                               torch.log(torch.tensor([sw, sh], dtype=torch.float64))])
            cells[i, row, :4] = t
            cells[i, row, 4] = 20.0
            cells[i, row, 5 + int(targets["cls"][i, j])] = 20.0
    pred = cells.view(b, k, fh, fw, 5 + c).permute(0, 1, 4, 2, 3).reshape(b, k * (5 + c), fh, fw)
    return {"pred": pred.float()}


@pytest.mark.parametrize("assign", ["best", "yolov5"])
def test_decode_of_encoded_targets_returns_the_boxes(assign):
    head = _head(assign)
    boxes = torch.tensor([[[0.30, 0.40, 0.12, 0.22], [0.70, 0.65, 0.5, 0.7]], [[0.55, 0.2, 0.28, 0.45], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1], [1, -1]])
    targets = head.build_targets(boxes, labels, (4, 4))
    det = head.decode(_encode(head, targets, 4, 4), topk=10)
    assert det.shape == (2, 10, 6)
    for i in range(2):
        for box, label in zip(boxes[i], labels[i]):
            if label < 0:
                continue
            hits = det[i][(det[i, :, 0] > 0.9) & (det[i, :, 1] == label)]
            assert hits.shape[0] >= 1
            err = (hits[:, 2:] - box).abs().max(dim=1).values.min()
            assert err < 1e-4, (assign, box, hits)
    # Fast NMS keeps exactly one detection per box for the yolov5 rule's several positives
    assert int((det[0, :, 0] > 0.5).sum()) == 2 and int((det[1, :, 0] > 0.5).sum()) == 1


def test_best_rule_assigns_centre_cell_and_best_anchor():
    head = _head("best")
    # centre (0.30, 0.40) on a 4x4 grid -> cell x=1, y=1; size (0.12, 0.22) is closest to anchor 0
    # (0.70, 0.65, 0.35, 0.55) -> cell x=2, y=2, anchor 1 (IoU 0.15/0.1925 = 0.78 vs anchor 2's 0.40)
    boxes = torch.tensor([[[0.30, 0.40, 0.12, 0.22], [0.70, 0.65, 0.35, 0.55]]])
    t = head.build_targets(boxes, torch.tensor([[0, 0]]), (4, 4))
    rows = sorted(t["idx"][0][t["mask"][0]].tolist())
    assert rows == [0 * 16 + 1 * 4 + 1, 1 * 16 + 2 * 4 + 2]
    assert t["obj"].sum() == 2 and t["obj"][0, 5] == 1 and t["obj"][0, 26] == 1


def test_yolov5_rule_assigns_anchors_within_4x_and_two_neighbours():
    head = _head("yolov5")
    # centre (0.30, 0.40) -> cell (1, 1) with fractional (0.2, 0.6): neighbours left (0, 1) and down (1, 2)
    # size (0.12, 0.22): anchor 0 (0.1, 0.2) ratio 1.2; anchor 1 (0.3, 0.5) ratio 2.5; anchor 2 ratio 5 -> out
    boxes = torch.tensor([[[0.30, 0.40, 0.12, 0.22]]])
    t = head.build_targets(boxes, torch.tensor([[0]]), (4, 4))
    rows = sorted(t["idx"][0][t["mask"][0]].tolist())
    cells = [1 * 4 + 1, 1 * 4 + 0, 2 * 4 + 1]
    assert rows == sorted(a * 16 + c for a in (0, 1) for c in cells)
    # target centre offsets stay in (-0.5, 1.5) relative to every assigned cell
    for j in torch.nonzero(t["mask"][0]).flatten().tolist():
        cell = int(t["idx"][0, j]) % 16
        ox = float(t["box"][0, j, 0]) - cell % 4
        oy = float(t["box"][0, j, 1]) - cell // 4
        assert -0.5 < ox < 1.5 and -0.5 < oy < 1.5


@pytest.mark.parametrize("assign", ["best", "yolov5"])
@pytest.mark.parametrize("iou_loss", ["iou", "giou", "ciou"])
def test_one_training_step_has_finite_losses_and_gradients_everywhere(assign, iou_loss):
    cfg = RunConfig(cnn_width=8, use_anchor=True, anchors=tuple(ANCHORS), anchor_assign=assign, iou_loss=iou_loss,
                    head_conv=8, classes=(0, 1))
    torch.manual_seed(0)
    model = build_detector(cfg)
    x = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[0.3, 0.4, 0.12, 0.22], [0.7, 0.6, 0.5, 0.7]], [[0.5, 0.5, 0.3, 0.3], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 1], [1, -1]])
    out = model(x)
    losses = model.head.loss(out, model.head.build_targets(boxes, labels, model.head.output_hw(out)))
    assert set(losses) == {"loss", "obj", "cls", "box"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("assign", ["best", "yolov5"])
def test_empty_images_give_finite_loss_with_gradients(assign):
    head = _head(assign, iou_loss="ciou")
    feats = torch.rand(2, 8, 4, 4, requires_grad=True)
    out = head(feats)
    for boxes, labels in ((torch.zeros(2, 3, 4), torch.full((2, 3), -1)), (torch.zeros(2, 0, 4), torch.zeros(2, 0).long())):
        losses = head.loss(out, head.build_targets(boxes, labels, (4, 4)))
        assert all(torch.isfinite(v) for v in losses.values())
        assert losses["box"] == 0 and losses["cls"] == 0
        grad = torch.autograd.grad(losses["loss"], feats, retain_graph=True)[0]
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_anchors_are_a_buffer_and_config_without_anchors_is_an_error():
    head = _head()
    assert "anchors" in dict(head.named_buffers())
    assert torch.allclose(head.state_dict()["anchors"], torch.tensor(ANCHORS))
    with pytest.raises(ConfigError, match="--auto-anchors"):
        build_detector(RunConfig(use_anchor=True))


def test_decode_is_sorted_and_padded():
    head = _head()
    det = head.decode(head(torch.rand(3, 8, 2, 2)), topk=500)
    assert det.shape == (3, 3 * 4 * 2, 6)  # fewer candidates than topk: all of them
    assert (det[:, :-1, 0] >= det[:, 1:, 0]).all()


# ------------------------------------------------------------------------------------------------
# a short end-to-end run with --auto-anchors

def _settings(tiny_yolo_dir: Path, runs_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "image_dir": str(tiny_yolo_dir), "runs_dir": str(runs_dir), "exp_name": "anchor",
        "cnn_width": 8, "batch_size": 16, "num_workers": 0, "img_size": "64x64", "eval_interval": 1,
        "lr": 0.02, "log_interval": 1, "seed": 0, "device": "cpu",
        "use_anchor": True, "auto_anchors": True, "num_anchors": 3, "iou_loss": "ciou", **extra,
    }


def test_auto_anchor_training_stores_and_resumes_anchors(tiny_yolo_dir, tmp_path):
    overrides = _settings(tiny_yolo_dir, tmp_path / "runs", epochs=2)
    result = run_training(None, overrides, tensorboard=False)
    assert result.epochs_done == 2
    ckpt = load_checkpoint(result.last_checkpoint)
    cfg = RunConfig(**ckpt["config"])
    assert cfg.use_anchor and not cfg.auto_anchors
    assert 1 <= len(cfg.anchors) <= 3 and all(0 < w <= 1 and 0 < h <= 1 for w, h in cfg.anchors)
    assert torch.allclose(ckpt["model"]["head.anchors"], torch.tensor(cfg.anchors, dtype=torch.float32))
    assert build_config(None, base=dict(ckpt["config"])).anchors == cfg.anchors  # config.yaml-safe
    # resume (even with --auto-anchors typed again) keeps the checkpoint's anchors
    resumed = run_training(None, {**overrides, "resume": str(result.run_dir), "epochs": 3}, tensorboard=False)
    assert resumed.epochs_done == 3
    again = RunConfig(**load_checkpoint(resumed.last_checkpoint)["config"])
    assert again.anchors == cfg.anchors
