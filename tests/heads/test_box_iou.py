"""bbox_iou against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from uhd_core.heads.box_iou import bbox_iou


def _t(*box: float) -> torch.Tensor:
    return torch.tensor(box, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["iou", "giou", "ciou"])
def test_identical_boxes_are_one(kind):
    box = _t(0.5, 0.5, 0.2, 0.4)
    assert bbox_iou(box, box, kind).item() == pytest.approx(1.0, abs=1e-5)  # eps in the union


def test_disjoint_boxes():
    # a = [0,1]x[0,1], b = [2,3]x[0,1]: iou 0; enclosing [0,3]x[0,1] area 3, union 2 -> giou = -(3-2)/3
    a, b = _t(0.5, 0.5, 1, 1), _t(2.5, 0.5, 1, 1)
    assert bbox_iou(a, b, "iou").item() == pytest.approx(0.0, abs=1e-9)
    assert bbox_iou(a, b, "giou").item() == pytest.approx(-1 / 3, abs=1e-6)
    # ciou: same aspect -> v = 0; centre distance^2 = 4, enclosing diagonal^2 = 9 + 1 = 10 -> -0.4
    assert bbox_iou(a, b, "ciou").item() == pytest.approx(-0.4, abs=1e-6)


def test_nested_boxes():
    # inner [0.25,0.75]^2 (area 0.25) inside outer [0,1]^2 (area 1): iou = 0.25, enclosing = outer -> giou = iou
    inner, outer = _t(0.5, 0.5, 0.5, 0.5), _t(0.5, 0.5, 1, 1)
    assert bbox_iou(inner, outer, "iou").item() == pytest.approx(0.25, abs=1e-6)
    assert bbox_iou(inner, outer, "giou").item() == pytest.approx(0.25, abs=1e-6)
    # same centre and aspect: ciou = iou
    assert bbox_iou(inner, outer, "ciou").item() == pytest.approx(0.25, abs=1e-6)


def test_ciou_by_hand():
    # pred [0,2]x[0,1] (cx 1, cy 0.5, w 2, h 1), target [0,1]x[0,2] (cx 0.5, cy 1, w 1, h 2)
    # inter = [0,1]x[0,1] = 1; union = 2 + 2 - 1 = 3 -> iou = 1/3
    # enclosing [0,2]x[0,2]: diagonal^2 = 8; centre distance^2 = 0.25 + 0.25 = 0.5 -> penalty 1/16
    # v = 4/pi^2 * (atan(1/2) - atan(2))^2; alpha = v / (1 - 1/3 + v)
    pred, target = _t(1, 0.5, 2, 1), _t(0.5, 1, 1, 2)
    v = 4 / math.pi**2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    alpha = v / (1 - 1 / 3 + v)
    expected = 1 / 3 - 0.5 / 8 - alpha * v  # = 0.3333 - 0.0625 - 0.0295... ~ 0.2413
    assert bbox_iou(pred, target, "ciou").item() == pytest.approx(expected, abs=1e-6)
    # giou here: enclosing area 4, union 3 -> 1/3 - 1/4
    assert bbox_iou(pred, target, "giou").item() == pytest.approx(1 / 3 - 1 / 4, abs=1e-6)


def test_vectorized_shapes():
    pred = torch.rand(2, 5, 4) + 0.1
    out = bbox_iou(pred, pred.clone(), "giou")
    assert out.shape == (2, 5)
    assert torch.allclose(out, torch.ones(2, 5), atol=1e-5)


@pytest.mark.parametrize("kind", ["iou", "giou", "ciou"])
@pytest.mark.parametrize("other", [(0.5, 0.5, 0.2, 0.4), (3.0, 3.0, 0.2, 0.4)])
def test_gradients_are_finite(kind, other):
    pred = torch.tensor([0.5, 0.5, 0.2, 0.4], requires_grad=True)
    loss = 1 - bbox_iou(pred, torch.tensor(other), kind)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        bbox_iou(_t(0, 0, 1, 1), _t(0, 0, 1, 1), "diou")  # type: ignore[arg-type]
