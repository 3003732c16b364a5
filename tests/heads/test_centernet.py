"""CenterNet head: targets, focal loss, Gaussian radius, decoding and peak suppression."""

from __future__ import annotations

import math

import pytest
import torch

from uhd_core.heads.centernet import CenterNetHead, centernet_focal_loss, decode_centernet, gaussian_radius

# A non-square grid (H=4 rows, W=8 columns) so swapped x/y or H/W cannot go unnoticed.
FH, FW = 4, 8


def _head(num_classes: int = 2, style: str = "gaussian") -> CenterNetHead:
    torch.manual_seed(0)
    return CenterNetHead(in_channels=6, num_classes=num_classes, heatmap_style=style)


def _batch(rows: list[list[tuple[int, float, float, float, float]]], pad_to: int | None = None):
    """rows[b] = [(cls, cx, cy, w, h), ...] -> boxes (B, M, 4), labels (B, M) padded with -1.

    Padding rows get a real-looking box so that a head which ignores the -1 would draw it."""
    m = pad_to or max(1, max(len(r) for r in rows))
    boxes = torch.full((len(rows), m, 4), 0.0)
    boxes[..., :] = torch.tensor([0.9, 0.9, 0.2, 0.2])
    labels = torch.full((len(rows), m), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        for j, (cls, cx, cy, w, h) in enumerate(row):
            boxes[b, j] = torch.tensor([cx, cy, w, h])
            labels[b, j] = cls
    return boxes, labels


# ------------------------------------------------------------------------------------------------
# build_targets

@pytest.mark.parametrize("style", ["gaussian", "single_peak"])
def test_peak_offset_and_size_of_one_box(style):
    head = _head(1, style)
    cx, cy, w, h = 0.3, 0.7, 0.5, 0.5
    boxes, labels = _batch([[(0, cx, cy, w, h)]])
    t = head.build_targets(boxes, labels, (FH, FW))
    ix, iy = math.floor(cx * FW), math.floor(cy * FH)  # 2, 2
    hm = t["hm"]
    assert hm.shape == (1, 1, FH, FW)
    assert hm[0, 0, iy, ix].item() == 1.0
    assert (hm == 1).sum().item() == 1  # exactly one peak
    assert hm.min().item() >= 0 and hm.max().item() <= 1
    assert t["cell"].tolist() == [[iy * FW + ix]]
    torch.testing.assert_close(t["off"][0, 0], torch.tensor([cx * FW - ix, cy * FH - iy]))
    torch.testing.assert_close(t["wh"][0, 0], torch.tensor([w * FW, h * FH]))  # in cells
    assert t["mask"].tolist() == [[True]]
    # a 4x2-cell box has CenterNet radius floor(0.74) = 0: a lone peak in both styles
    assert hm.sum().item() == 1.0


def test_gaussian_splat_follows_centernet_radius_and_sigma():
    head = _head(1)
    # 6x4 cells centred on cell (x=4, y=2): radius = floor(1.317) = 1 (see test_gaussian_radius_*),
    # sigma = diameter / 6 = 3 / 6 = 0.5, so value = exp(-(dx^2 + dy^2) / (2 * 0.25)) inside the
    # 3x3 window and 0 outside: direct neighbours exp(-2), diagonal ones exp(-4).
    assert math.floor(_reference_radius(4.0, 6.0)) == 1
    boxes, labels = _batch([[(0, 4.5 / FW, 2.5 / FH, 6 / FW, 4 / FH)]])
    hm = head.build_targets(boxes, labels, (FH, FW))["hm"][0, 0]
    expected = torch.zeros(FH, FW)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            expected[2 + dy, 4 + dx] = math.exp(-(dx * dx + dy * dy) / 0.5)
    torch.testing.assert_close(hm, expected)


def test_box_on_the_right_and_bottom_border_stays_on_the_grid():
    head = _head(1)
    boxes, labels = _batch([[(0, 1.0, 1.0, 0.2, 0.2)]])
    t = head.build_targets(boxes, labels, (FH, FW))
    assert t["hm"][0, 0, FH - 1, FW - 1] == 1
    assert t["cell"].item() == FH * FW - 1
    torch.testing.assert_close(t["off"][0, 0], torch.tensor([1.0, 1.0]))


def test_padding_rows_are_ignored():
    head = _head(2)
    real = [(1, 0.3, 0.3, 0.2, 0.4)]
    alone = head.build_targets(*_batch([real]), (FH, FW))
    padded = head.build_targets(*_batch([real], pad_to=4), (FH, FW))  # 3 padding rows at (0.9, 0.9)
    torch.testing.assert_close(padded["hm"], alone["hm"])
    assert padded["mask"].tolist() == [[True, False, False, False]]
    assert padded["hm"][0, :, math.floor(0.9 * FH), math.floor(0.9 * FW)].sum() == 0


def test_two_classes_go_to_their_own_channels():
    head = _head(2)
    a = (0, 0.1, 0.1, 0.2, 0.3)
    b = (1, 0.8, 0.8, 0.2, 0.3)
    t = head.build_targets(*_batch([[a, b]]), (FH, FW))
    hm = t["hm"][0]
    ax, ay = math.floor(0.1 * FW), math.floor(0.1 * FH)
    bx, by = math.floor(0.8 * FW), math.floor(0.8 * FH)
    assert hm[0, ay, ax] == 1 and hm[1, by, bx] == 1
    assert hm[1, ay, ax] < 1 and hm[0, by, bx] < 1
    assert (hm[0] == 1).sum() == 1 and (hm[1] == 1).sum() == 1


def test_overlapping_gaussians_of_one_class_take_the_maximum():
    head = _head(1)
    a = (0, 2.5 / FW, 1.5 / FH, 4 / FW, 3 / FH)
    b = (0, 4.5 / FW, 1.5 / FH, 4 / FW, 3 / FH)
    both = head.build_targets(*_batch([[a, b]]), (FH, FW))["hm"]
    only_a = head.build_targets(*_batch([[a]]), (FH, FW))["hm"]
    only_b = head.build_targets(*_batch([[b]]), (FH, FW))["hm"]
    torch.testing.assert_close(both, torch.maximum(only_a, only_b))


def test_batch_targets_equal_per_image_targets():
    head = _head(2)
    rows = [[(0, 0.2, 0.3, 0.2, 0.2), (1, 0.6, 0.6, 0.3, 0.5)], [(1, 0.5, 0.5, 0.4, 0.4)], []]
    batched = head.build_targets(*_batch(rows, pad_to=2), (FH, FW))
    for i, row in enumerate(rows):
        single = head.build_targets(*_batch([row], pad_to=2), (FH, FW))
        torch.testing.assert_close(batched["hm"][i], single["hm"][0])


@pytest.mark.parametrize("num_slots", [0, 1, 3])
def test_empty_images_give_zero_heatmap_and_a_finite_loss_with_gradients(num_slots):
    head = _head(2)
    boxes = torch.rand(2, num_slots, 4)
    labels = torch.full((2, num_slots), -1, dtype=torch.long)
    t = head.build_targets(boxes, labels, (FH, FW))
    assert t["hm"].shape == (2, 2, FH, FW)
    assert torch.count_nonzero(t["hm"]) == 0
    assert not t["mask"].any()
    features = torch.randn(2, 6, FH, FW, requires_grad=True)
    losses = head.loss(head(features), t)
    assert set(losses) == {"loss", *head.loss_terms}
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    assert losses["off"].item() == 0 and losses["wh"].item() == 0
    assert losses["hm"].item() > 0  # the negatives still teach "nothing here"
    losses["loss"].backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert head.hm.weight.grad is not None and head.hm.weight.grad.abs().sum() > 0
    for p in head.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_loss_is_finite_and_every_parameter_gets_a_gradient():
    head = _head(2)
    boxes, labels = _batch([[(0, 0.2, 0.3, 0.2, 0.2), (1, 0.6, 0.6, 0.3, 0.5)], [(1, 0.5, 0.5, 0.4, 0.4)]])
    t = head.build_targets(boxes, labels, (FH, FW))
    losses = head.loss(head(torch.randn(2, 6, FH, FW)), t)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_off_and_wh_losses_are_l1_at_the_centre_cells_only():
    head = _head(1)
    boxes, labels = _batch([[(0, 0.3, 0.7, 0.5, 0.5)]])
    t = head.build_targets(boxes, labels, (FH, FW))
    off = torch.full((1, 2, FH, FW), 100.0)  # garbage everywhere except the centre cell
    wh = torch.full((1, 2, FH, FW), 100.0)
    iy, ix = 2, 2
    off[0, :, iy, ix] = t["off"][0, 0] + torch.tensor([0.1, -0.3])
    wh[0, :, iy, ix] = t["wh"][0, 0] + torch.tensor([1.0, 2.0])
    losses = head.loss({"hm": torch.zeros(1, 1, FH, FW), "off": off, "wh": wh}, t)
    # mean over boxes of the summed |error| over (x, y): (0.1 + 0.3) and (1 + 2)
    assert losses["off"].item() == pytest.approx(0.4, abs=1e-5)
    assert losses["wh"].item() == pytest.approx(3.0, abs=1e-5)


# ------------------------------------------------------------------------------------------------
# focal loss

def test_focal_loss_matches_a_hand_computed_2x2_case():
    # logits (1, 1, 2, 2) = [[ln 3, 0], [-ln 3, 0]] -> p = sigmoid = [[0.75, 0.5], [0.25, 0.5]]
    # target              = [[1,   0.5], [0,     0]]: one positive at (0, 0)
    # alpha = 2, beta = 4; loss = -(sum pos + sum neg) / num_pos with num_pos = 1:
    #   (0,0) positive:            -(1-p)^2 log p            = -(0.25^2) ln 0.75 = 0.0625 ln(4/3)
    #   (0,1) neg, t=0.5, p=0.5:   -(1-t)^4 p^2 log(1-p)     = -(0.0625)(0.25) ln 0.5 = 0.015625 ln 2
    #   (1,0) neg, t=0,   p=0.25:  -(1)^4 (0.25^2) ln 0.75                          = 0.0625 ln(4/3)
    #   (1,1) neg, t=0,   p=0.5:   -(1)^4 (0.5^2) ln 0.5                            = 0.25 ln 2
    # total = 0.125 ln(4/3) + 0.265625 ln 2 = 0.0359603 + 0.1841172 = 0.2200775
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[ln3, 0.0], [-ln3, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    expected = 0.125 * math.log(4 / 3) + 0.265625 * math.log(2)
    assert expected == pytest.approx(0.2200775, abs=1e-6)
    assert centernet_focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_is_normalised_by_the_number_of_peaks():
    # Two copies of the 2x2 case side by side: twice the sum over twice the peaks = the same value.
    ln3 = math.log(3.0)
    one = torch.tensor([[[[ln3, 0.0], [-ln3, 0.0]]]])
    tgt = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    two = torch.cat([one, one], dim=3)
    tgt2 = torch.cat([tgt, tgt], dim=3)
    assert centernet_focal_loss(two, tgt2).item() == pytest.approx(centernet_focal_loss(one, tgt).item(), rel=1e-6)
    # no peaks at all: the sum is divided by 1, not 0
    zeros = torch.zeros(1, 1, 2, 2)
    assert centernet_focal_loss(zeros, zeros).item() == pytest.approx(4 * 0.25 * math.log(2), rel=1e-6)


def test_focal_loss_stays_finite_for_saturated_logits():
    logits = torch.tensor([[[[100.0, -100.0], [-100.0, 100.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # confidently wrong at (0,0) and (0,1)
    loss = centernet_focal_loss(logits, target)
    assert torch.isfinite(loss) and loss.item() > 10
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------
# gaussian radius

def _reference_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's gaussian_radius (xingyizhou/CenterNet, src/lib/utils/image.py), verbatim in math."""
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def test_gaussian_radius_of_a_known_box():
    # h = 4, w = 2 cells, min_overlap 0.7:
    #   r1 = (6 + sqrt(36 - 4 * 1.4118)) / 2          = (6 + 5.5093) / 2  = 5.7547
    #   r2 = (12 + sqrt(144 - 16 * 2.4)) / 2          = (12 + 10.2762) / 2 = 11.1381
    #   r3 = (-8.4 + sqrt(70.56 + 4 * 2.8 * 2.4)) / 2 = (-8.4 + 9.8712) / 2 = 0.7356
    r = gaussian_radius(torch.tensor(4.0), torch.tensor(2.0)).item()
    assert r == pytest.approx(0.7356, abs=1e-4)
    assert r == pytest.approx(_reference_radius(4.0, 2.0), rel=1e-6)


def test_gaussian_radius_matches_the_reference_on_many_boxes_and_keeps_shape():
    h = torch.tensor([[1.0, 2.5, 7.0], [16.0, 0.5, 3.0]])
    w = torch.tensor([[1.0, 9.0, 7.0], [2.0, 0.5, 12.0]])
    r = gaussian_radius(h, w)
    assert r.shape == h.shape
    for hv, wv, rv in zip(h.flatten().tolist(), w.flatten().tolist(), r.flatten().tolist()):
        assert rv == pytest.approx(_reference_radius(hv, wv), rel=1e-5)
    assert gaussian_radius(torch.tensor(3.0), torch.tensor(5.0), 0.5).item() == pytest.approx(
        _reference_radius(3.0, 5.0, 0.5), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# decoding

def test_decode_inverts_build_targets():
    head = _head(2)
    rows = [
        [(0, 0.13, 0.21, 0.2, 0.3), (1, 0.61, 0.83, 0.15, 0.25), (0, 0.88, 0.4, 0.1, 0.5)],
        [(1, 0.45, 0.55, 0.6, 0.7)],
    ]
    boxes, labels = _batch(rows, pad_to=3)
    t = head.build_targets(boxes, labels, (FH, FW))
    b, m = labels.shape
    off = torch.zeros(b, 2, FH * FW)
    wh = torch.zeros(b, 2, FH * FW)
    for i in range(b):
        for j in range(m):
            if labels[i, j] >= 0:
                off[i, :, t["cell"][i, j]] = t["off"][i, j]
                wh[i, :, t["cell"][i, j]] = t["wh"][i, j]
    outputs = {"hm": torch.logit(t["hm"], eps=1e-7), "off": off.view(b, 2, FH, FW), "wh": wh.view(b, 2, FH, FW)}
    det = head.decode(outputs, topk=10)
    assert det.shape == (b, 10, 6)
    for i, row in enumerate(rows):
        top = det[i, : len(row)]
        assert torch.all(top[:, 0] > 1 - 1e-5), "every box comes back with score 1"
        assert torch.all(det[i, len(row):, 0] < 0.5), "and nothing else scores"
        got = sorted(tuple(r) for r in top[:, 1:].tolist())
        want = sorted((float(c), cx, cy, w, h) for c, cx, cy, w, h in row)
        for g, e in zip(got, want):
            assert g == pytest.approx(e, abs=1e-5)
    assert torch.all(det[..., 0][:, :-1] >= det[..., 0][:, 1:]), "rows are sorted by score"


def test_max_pool_keeps_only_local_maxima():
    heat = torch.zeros(1, 1, 8, 8)
    heat[0, 0, 2, 2] = 0.9
    heat[0, 0, 2, 3] = 0.8  # neighbour of a higher peak: suppressed
    heat[0, 0, 3, 3] = 0.7  # diagonal neighbour: suppressed too
    heat[0, 0, 6, 6] = 0.5  # far away: its own peak
    heat[0, 0, 6, 4] = 0.4  # two cells from the 0.5 peak: also a local maximum
    det = decode_centernet(heat, torch.zeros(1, 2, 8, 8), torch.ones(1, 2, 8, 8), topk=5)
    scores = det[0, :, 0].tolist()
    assert scores[:3] == pytest.approx([0.9, 0.5, 0.4])
    assert all(s == 0 for s in scores[3:])
    assert 0.8 not in [round(s, 6) for s in scores] and 0.7 not in [round(s, 6) for s in scores]
    # positions: cx = (x + off) / W with off 0
    assert det[0, 0, 2:4].tolist() == pytest.approx([2 / 8, 2 / 8])
    assert det[0, 1, 2:4].tolist() == pytest.approx([6 / 8, 6 / 8])


def test_decode_reports_class_from_channel_and_clamps_negative_sizes():
    heat = torch.zeros(1, 3, 4, 4)
    heat[0, 2, 1, 3] = 0.6
    wh = torch.full((1, 2, 4, 4), -1.0)
    det = decode_centernet(heat, torch.full((1, 2, 4, 4), 0.5), wh, topk=1)
    score, cls, cx, cy, w, h = det[0, 0].tolist()
    assert score == pytest.approx(0.6) and cls == 2
    assert (cx, cy) == pytest.approx(((3 + 0.5) / 4, (1 + 0.5) / 4))
    assert w == 0 and h == 0


def test_decode_topk_larger_than_the_grid_is_capped():
    det = decode_centernet(torch.rand(2, 1, 2, 2), torch.zeros(2, 2, 2, 2), torch.zeros(2, 2, 2, 2), topk=50)
    assert det.shape == (2, 4, 6)
