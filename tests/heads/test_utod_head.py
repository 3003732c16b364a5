"""The utod head: shapes per option, one positive per box, IoU targets, decode, loss, merged export."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from family_cases import randomized
from uhd_core.config import build_config
from uhd_core.export.onnx_export import export_onnx
from uhd_core.export.onnx_verify import verify_onnx
from uhd_core.heads.utod_head import DEFAULT_ANCHORS, PRIOR_LOGIT, UtodHead, UtodOptions
from uhd_core.models.detector import build_detector

ANCHORS = ((0.1, 0.2), (0.3, 0.5), (0.6, 0.9))
BOXES = torch.tensor([[[0.30, 0.40, 0.12, 0.22], [0.70, 0.65, 0.35, 0.55]], [[0.55, 0.2, 0.6, 0.85], [0, 0, 0, 0]]])
LABELS = torch.tensor([[0, 1], [1, -1]])


def _head(num_classes: int = 1, **opts) -> UtodHead:
    torch.manual_seed(0)
    return UtodHead(16, num_classes, ANCHORS, UtodOptions(**opts), "relu")


def _encode(head: UtodHead, targets, fh: int, fw: int) -> dict[str, torch.Tensor]:
    """Raw outputs whose positives decode exactly to their target boxes, quality high there, low elsewhere."""
    a, c = head.num_anchors, head.cls_out
    b = targets["idx"].shape[0]
    box = torch.zeros(b, a, 4, fh, fw)
    score = torch.full((b, a, fh, fw), -12.0)
    cls = torch.full((b, a, max(c, 1), fh, fw), -12.0)
    for i, j in zip(*torch.nonzero(targets["mask"], as_tuple=True), strict=True):
        row = int(targets["idx"][i, j])
        k, y, x = row // (fh * fw), row % (fh * fw) // fw, row % fw
        cx, cy, w, h = targets["box"][i, j].tolist()  # cells
        aw, ah = (head.effective_anchors()[k] * torch.tensor([fw, fh])).tolist()
        box[i, k, :, y, x] = torch.tensor([math.log((cx - x) / (1 - cx + x)), math.log((cy - y) / (1 - cy + y)),
                                           math.log(math.expm1(w / aw)), math.log(math.expm1(h / ah))])
        score[i, k, y, x] = 12.0
        cls[i, k, min(int(targets["cls"][i, j]), c - 1) if c else 0, y, x] = 12.0
    out = {"box": box.reshape(b, a * 4, fh, fw), "obj": score.clone(), "quality": score}
    if c:
        out["cls"] = cls.reshape(b, a * c, fh, fw)
    return out


OPTION_GRID = [dict(zip(("lob", "residual", "sppf", "score"), v, strict=True))
               for v in itertools.product([True, False], [True, False], [True, False], ["quality", "obj_quality"])]


@pytest.mark.parametrize("classes", ["0", "0,1"])
@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_combination_has_the_shapes_a_finite_loss_and_gradients_everywhere(opts, classes):
    arch_options = ",".join(f"{k}={v}" for k, v in opts.items())
    cfg = build_config(None, {"arch": "utod", "cnn_width": 4, "activation": "relu", "arch_options": arch_options,
                              "classes": classes})
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    assert model.backbone.out_channels == (16 if opts["sppf"] else 32)
    out = model(torch.rand(2, 3, 64, 64))
    a, c = len(DEFAULT_ANCHORS), cfg.num_classes
    want = {"box": (2, a * 4, 8, 8), "obj": (2, a, 8, 8), "quality": (2, a, 8, 8)}
    if c > 1:
        want["cls"] = (2, a * c, 8, 8)
    assert {k: tuple(v.shape) for k, v in out.items()} == want
    assert list(model.head.output_names) == list(want)
    losses = model.head.loss(out, model.head.build_targets(BOXES, LABELS.clamp(max=c - 1), (8, 8)))
    assert set(losses) == {"loss", *model.head.loss_terms} and ("cls" in losses) == (c > 1)
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    losses["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert model.eval().head.decode(model(torch.rand(1, 3, 64, 64)), 7).shape == (1, 7, 6)


def test_one_positive_per_box_at_the_centre_cell_and_best_shape_anchor():
    head = _head()
    t = head.build_targets(BOXES, LABELS, (4, 4))
    assert t["idx"].shape == (2, 2) and t["mask"].tolist() == [[True, True], [True, False]]
    # (0.30, 0.40) -> cell (1, 1); 0.12x0.22 is closest to anchor 0 (shape IoU 0.76 vs 0.18)
    # (0.70, 0.65) -> cell (2, 2); 0.35x0.55 -> anchor 1; (0.55, 0.2) 0.6x0.85 -> cell (2, 0), anchor 2
    assert t["idx"][0].tolist() == [0 * 16 + 1 * 4 + 1, 1 * 16 + 2 * 4 + 2]
    assert int(t["idx"][1, 0]) == 2 * 16 + 0 * 4 + 2
    assert torch.allclose(t["box"][0, 0], torch.tensor([1.2, 1.6, 0.48, 0.88]))
    # the learned wh_scale moves the effective anchors, and with them the assignment
    with torch.no_grad():
        head.wh_scale[0] = 4.0
    assert int(head.build_targets(BOXES, LABELS, (4, 4))["idx"][0, 0]) // 16 == 1  # 0.4x0.8: IoU 0.08 < 0.18


def test_iou_targets_are_the_detached_iou_at_positives_and_zero_elsewhere():
    head = _head()
    t = head.build_targets(BOXES, LABELS, (4, 4))
    exact = _encode(head, t, 4, 4)
    ciou, iou_map = head.iou_targets(exact, t)
    assert torch.allclose(ciou[t["mask"]], torch.ones(3), atol=1e-5)
    assert iou_map.shape == (2, 3 * 16) and iou_map.sum() == pytest.approx(3, abs=1e-4)
    assert iou_map[0, 5] == pytest.approx(1, abs=1e-5) and iou_map[1, 34] == pytest.approx(1, abs=1e-5)
    # a worse box: the target is that box's CIoU (clamped), with no gradient through the target
    worse = {k: v.clone().requires_grad_(True) for k, v in exact.items()}
    with torch.no_grad():
        worse["box"][0, 0] += 0.7  # anchor 0, tx at every cell: moves box 0's centre
    ciou, iou_map = head.iou_targets(worse, t)
    assert 0 < float(iou_map[0, 5]) < 0.99
    assert float(iou_map[0, 5]) == pytest.approx(float(ciou[0, 0].detach().clamp(0, 1)))
    assert not iou_map.requires_grad and ciou.requires_grad
    # the loss at an exact prediction: box term 0
    assert float(head.loss(exact, t)["box"].detach()) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("nms_candidates", [0, 6])
@pytest.mark.parametrize("num_classes", [1, 2])
@pytest.mark.parametrize("score", ["quality", "obj_quality"])
def test_decode_inverts_an_encoded_box(num_classes, score, nms_candidates):
    head = _head(num_classes, score=score, nms_candidates=nms_candidates)
    labels = LABELS.clamp(max=num_classes - 1)
    t = head.build_targets(BOXES, labels, (4, 4))
    det = head.decode(_encode(head, t, 4, 4), topk=10)
    assert det.shape == (2, min(10, 6 * num_classes) if nms_candidates else 10, 6)  # at most candidates x classes
    for i in range(2):
        kept = det[i][det[i, :, 0] > 0.9]
        want = [(int(lab), box) for box, lab in zip(BOXES[i], labels[i], strict=True) if lab >= 0]
        assert kept.shape[0] == len(want)
        for label, box in want:
            err = (kept[:, 2:] - box).abs().max(dim=1).values
            assert float(err.min()) < 1e-4 and int(kept[int(err.argmin()), 1]) == label
    assert bool((det[:, 1:, 0] <= det[:, :-1, 0]).all())  # sorted by score


def test_quality_power_and_score_rule_change_the_score():
    head = _head(quality_power=2.0, score="obj_quality")
    out = {"box": torch.zeros(1, 12, 2, 2), "obj": torch.zeros(1, 3, 2, 2), "quality": torch.full((1, 3, 2, 2), 1.0)}
    _, scores = head.decode_boxes(out)
    assert torch.allclose(scores, torch.full((1, 12, 1), 0.5 * torch.sigmoid(torch.tensor(1.0)).item() ** 2))


def test_prior_biases_and_fixed_wh_scale():
    head = _head(learn_wh_scale=False)
    assert head.obj_tower[-1].bias.eq(PRIOR_LOGIT).all() and head.quality_tower[-1].bias.eq(PRIOR_LOGIT).all()
    assert "wh_scale" not in dict(head.named_parameters()) and "wh_scale" in head.state_dict()
    assert torch.sigmoid(torch.tensor(PRIOR_LOGIT)).item() == pytest.approx(0.01)


def test_empty_images_give_a_finite_loss():
    head = _head()
    out = head(torch.rand(2, 16, 4, 4))
    t = head.build_targets(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), (4, 4))
    losses = head.loss(out, t)
    assert float(losses["box"].detach()) == 0 and math.isfinite(float(losses["loss"].detach()))


@pytest.mark.parametrize("classes,nms", [("0", 0), ("0,1", 0), ("0", 24), ("0,1", 24)])
def test_merged_and_raw_exports_match_pytorch_with_every_branch(classes, nms, tmp_path):
    # randomized weights: a fresh head's prior biases give near-equal scores, whose order nothing fixes
    model, cfg = randomized("utod-utod", classes=classes,
                            arch_options=f"lob=1,lob_depth=3,score=obj_quality,quality_power=1.5,nms_candidates={nms}")
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(1, 3, 64, 64, generator=g), torch.rand(2, 3, 96, 128, generator=g)]
    for merged in (True, False):
        report = export_onnx(model, cfg, tmp_path / f"m{merged}.onnx", merge_postprocess=merged, dynamic=True, topk=20)
        diffs = verify_onnx(model, report.path, inputs, tol=1e-4)
        assert all(d < 1e-4 for d in diffs.values()), (merged, diffs)
