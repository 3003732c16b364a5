"""Tests for uhd_core.metrics.ap (VOC / COCO average precision)."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest

from uhd_core.metrics.ap import (
    ImageDetections,
    ImageGroundTruth,
    box_iou_xyxy,
    coco_ap_101_point,
    evaluate_coco_map,
    evaluate_voc_map,
    voc_ap_all_point,
)


def D(boxes, scores, labels) -> ImageDetections:
    return ImageDetections(
        boxes=np.asarray(boxes, dtype=float).reshape(-1, 4),
        scores=np.asarray(scores, dtype=float),
        labels=np.asarray(labels, dtype=int),
    )


def G(boxes, labels) -> ImageGroundTruth:
    return ImageGroundTruth(
        boxes=np.asarray(boxes, dtype=float).reshape(-1, 4), labels=np.asarray(labels, dtype=int)
    )


EMPTY_D = D(np.zeros((0, 4)), [], [])
EMPTY_G = G(np.zeros((0, 4)), [])

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
FAR = [50.0, 50.0, 60.0, 60.0]

# Two GT, ranked detections TP, FP, TP:
#   tp cum = 1, 1, 2 ; fp cum = 0, 1, 1
#   recall    = 1/2, 1/2, 2/2
#   precision = 1/1, 1/2, 2/3
#   monotone-from-right precision = 1, 2/3, 2/3
#   AP = (0.5 - 0) * 1 + (0.5 - 0.5) * 2/3 + (1.0 - 0.5) * 2/3 = 0.5 + 1/3 = 5/6
AP_TP_FP_TP = 5.0 / 6.0


# ------------------------------------------------------------------ box_iou_xyxy


def test_box_iou_disjoint_nested_identical():
    a = np.array([A, A, A, A])
    b = np.array(
        [
            B,  # disjoint
            [2.0, 2.0, 4.0, 4.0],  # nested: 4 / 100
            A,  # identical
            [10.0, 0.0, 20.0, 10.0],  # touching edge only: zero-area intersection
        ]
    )
    iou = box_iou_xyxy(a, b)
    assert iou.shape == (4, 4)
    np.testing.assert_allclose(np.diag(iou), [0.0, 0.04, 1.0, 0.0], atol=1e-12)
    # partial overlap, hand computed: inter 5*10 = 50, union 100 + 100 - 50 = 150
    assert box_iou_xyxy(np.array([A]), np.array([[5.0, 0.0, 15.0, 10.0]]))[0, 0] == pytest.approx(1 / 3)
    # symmetric
    np.testing.assert_allclose(box_iou_xyxy(b, a), iou.T)


def test_box_iou_empty_shapes():
    assert box_iou_xyxy(np.zeros((0, 4)), np.array([A])).shape == (0, 1)
    assert box_iou_xyxy(np.array([A, B]), np.zeros((0, 4))).shape == (2, 0)


# -------------------------------------------------------------- voc_ap_all_point


def test_voc_ap_all_point_non_monotonic_precision():
    recall = np.array([0.2, 0.4, 0.4, 0.6, 0.8])
    precision = np.array([1.0, 0.5, 0.8, 0.6, 0.7])
    # padded:   mrec = [0, .2, .4, .4, .6, .8, 1],  mpre = [0, 1, .5, .8, .6, .7, 0]
    # monotone (max from the right): mpre = [1, 1, .8, .8, .7, .7, 0]
    # AP = .2*1 + .2*.8 + (0)*.8 + .2*.7 + .2*.7 + .2*0 = .2 + .16 + .14 + .14 = 0.64
    # (without the interpolation it would be .2 + .1 + .12 + .14 = 0.56)
    assert voc_ap_all_point(recall, precision) == pytest.approx(0.64, abs=1e-12)


def test_voc_ap_all_point_empty_and_perfect():
    assert voc_ap_all_point(np.array([]), np.array([])) == 0.0
    assert voc_ap_all_point(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def test_coco_ap_101_point_hand_curve():
    # recall reaches 0.5 with precision 1 and never more: r in {0, .01, ..., .5} -> 51 points of 1.0
    assert coco_ap_101_point(np.array([0.5]), np.array([1.0])) == pytest.approx(51 / 101)


# ---------------------------------------------------------------- evaluate_voc_map


def test_perfect_detections_give_ap_one():
    gts = [G([A, B], [0, 0]), G([A], [0])]
    dets = [D([B, A], [0.9, 0.8], [0, 0]), D([A], [0.7], [0])]
    res = evaluate_voc_map(dets, gts, num_classes=1)
    assert res.map == pytest.approx(1.0)
    assert res.per_class == {0: pytest.approx(1.0)}
    assert res.num_gt == {0: 3}
    assert res.iou_threshold == 0.5
    coco = evaluate_coco_map(dets, gts, num_classes=1)
    assert coco["map_50_95"] == pytest.approx(1.0)
    assert coco["map_50"] == pytest.approx(1.0)
    assert coco["map_75"] == pytest.approx(1.0)


def test_no_detections_give_zero():
    gts = [G([A, B], [0, 0])]
    res = evaluate_voc_map([EMPTY_D], gts, num_classes=1)
    assert res.map == 0.0
    assert res.per_class == {0: 0.0}
    assert evaluate_coco_map([EMPTY_D], gts, num_classes=1)["map_50_95"] == 0.0


def test_tp_fp_tp_hand_computed():
    gts = [G([A, B], [0, 0])]
    dets = [D([A, FAR, B], [0.9, 0.8, 0.7], [0, 0, 0])]
    res = evaluate_voc_map(dets, gts, num_classes=1)
    assert res.per_class[0] == pytest.approx(AP_TP_FP_TP, abs=1e-12)
    assert res.map == pytest.approx(AP_TP_FP_TP, abs=1e-12)


def test_ranking_is_by_score_not_input_order():
    # Same as above but given in scrambled order: FP must still rank 2nd.
    gts = [G([A, B], [0, 0])]
    dets = [D([B, FAR, A], [0.7, 0.8, 0.9], [0, 0, 0])]
    assert evaluate_voc_map(dets, gts, 1).map == pytest.approx(AP_TP_FP_TP, abs=1e-12)


def test_ranking_spans_images():
    # TP (img0, .9), FP (img1, .8), TP (img0, .7): the FP in another image sits between.
    gts = [G([A, B], [0, 0]), EMPTY_G]
    dets = [D([A, B], [0.9, 0.7], [0, 0]), D([FAR], [0.8], [0])]
    assert evaluate_voc_map(dets, gts, 1).map == pytest.approx(AP_TP_FP_TP, abs=1e-12)


def test_duplicate_detection_counts_as_fp():
    # A hit twice (0.9, 0.8) then B (0.7): TP, FP(duplicate), TP -> 5/6.
    # Were the duplicate a TP, recall would exceed 1 / AP would be 1.0.
    gts = [G([A, B], [0, 0])]
    dup = [0.0, 0.0, 10.0, 9.0]  # IoU 0.9 with A
    dets = [D([A, dup, B], [0.9, 0.8, 0.7], [0, 0, 0])]
    assert evaluate_voc_map(dets, gts, 1).map == pytest.approx(AP_TP_FP_TP, abs=1e-12)
    # COCO rule agrees here (no other free GT overlaps the duplicate).
    assert evaluate_coco_map(dets, gts, 1)["map_50"] == pytest.approx(
        coco_ap_101_point(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])), abs=1e-12
    )


def test_voc_vs_coco_matching_rule_for_duplicates():
    # GT A = [0,0,10,10], GT A2 = [2,0,12,10]; det1 == A (TP), det2 = [0.5,0,10.5,10]:
    #   IoU(det2, A)  = 9.5*10 / (100+100-95) = 95/105 ~ 0.905  (best, but A already matched)
    #   IoU(det2, A2) = 8.5*10 / (100+100-85) = 85/115 ~ 0.739
    # VOC: best-IoU GT is matched -> FP: recall .5 precision 1 then FP -> AP = 0.5.
    # COCO: best *unmatched* GT is A2 with 0.739 -> TP for t in {.5,.55,.6,.65,.7} (AP 1),
    #       FP for t >= .75 (AP = 51/101, recall stops at .5).
    a2 = [2.0, 0.0, 12.0, 10.0]
    det2 = [0.5, 0.0, 10.5, 10.0]
    gts = [G([A, a2], [0, 0])]
    dets = [D([A, det2], [0.9, 0.8], [0, 0])]
    assert evaluate_voc_map(dets, gts, 1).map == pytest.approx(0.5, abs=1e-12)
    coco = evaluate_coco_map(dets, gts, 1)
    assert coco["map_50"] == pytest.approx(1.0, abs=1e-12)
    assert coco["map_75"] == pytest.approx(51 / 101, abs=1e-12)
    assert coco["map_50_95"] == pytest.approx((5 * 1.0 + 5 * 51 / 101) / 10, abs=1e-12)


def test_wrong_class_does_not_match():
    gts = [G([A], [0])]
    wrong_only = [D([A], [0.9], [1])]
    res = evaluate_voc_map(wrong_only, gts, num_classes=2)
    assert res.per_class == {0: 0.0}  # class 1 has no GT -> excluded
    assert res.map == 0.0
    # A wrong-class detection ranked above the right one is not an FP for class 0.
    both = [D([A, A], [0.9, 0.8], [1, 0])]
    assert evaluate_voc_map(both, gts, num_classes=2).per_class == {0: pytest.approx(1.0)}


def test_iou_exactly_at_threshold_counts():
    gts = [G([A], [0])]
    half = [D([[0.0, 0.0, 5.0, 10.0]], [0.9], [0])]  # IoU = 50/100 = 0.5 exactly
    assert box_iou_xyxy(half[0].boxes, gts[0].boxes)[0, 0] == 0.5
    assert evaluate_voc_map(half, gts, 1, iou_threshold=0.5).map == 1.0
    assert evaluate_voc_map(half, gts, 1, iou_threshold=0.5 + 1e-9).map == 0.0
    coco = evaluate_coco_map(half, gts, 1)
    assert coco["map_50"] == pytest.approx(1.0)
    assert coco["map_50_95"] == pytest.approx(0.1)  # matched at t = 0.50 only


def test_multiclass_mean_ignores_class_without_gt():
    gts = [G([A, B, FAR], [0, 1, 1]), G([B], [1])]
    # class 0: one GT, hit -> AP 1.0
    # class 1: three GT (B and FAR in img0, B in img1); ranked TP (img0 B .9), FP (.8), TP (img1 B .7)
    # class 2: detections but no GT -> excluded from the mean and from per_class
    dets = [
        D([A, B, [70.0, 70.0, 80.0, 80.0], [0.0, 0.0, 3.0, 3.0]], [0.95, 0.9, 0.8, 0.99], [0, 1, 1, 2]),
        D([B], [0.7], [1]),
    ]
    # class 1 (3 GT): ranked TP, FP, TP
    #   recall = 1/3, 1/3, 2/3 ; precision = 1, 1/2, 2/3 -> monotone 1, 2/3, 2/3
    #   AP = 1/3 * 1 + 0 + (2/3 - 1/3) * 2/3 = 1/3 + 2/9 = 5/9
    res = evaluate_voc_map(dets, gts, num_classes=3)
    assert set(res.per_class) == {0, 1}
    assert res.per_class[0] == pytest.approx(1.0)
    assert res.per_class[1] == pytest.approx(5 / 9, abs=1e-12)
    assert res.map == pytest.approx((1.0 + 5 / 9) / 2, abs=1e-12)
    assert res.num_gt == {0: 1, 1: 3, 2: 0}


def test_no_gt_at_all_gives_zero_and_empty_images_work():
    dets = [D([A], [0.5], [0]), EMPTY_D]
    res = evaluate_voc_map(dets, [EMPTY_G, EMPTY_G], num_classes=2)
    assert res.map == 0.0 and res.per_class == {}
    assert evaluate_coco_map(dets, [EMPTY_G, EMPTY_G], num_classes=2) == {
        "map_50_95": 0.0,
        "map_50": 0.0,
        "map_75": 0.0,
    }
    assert evaluate_voc_map([], [], num_classes=1).map == 0.0
    # mix of empty images
    gts = [EMPTY_G, G([A], [0]), EMPTY_G]
    dets = [EMPTY_D, D([A], [0.3], [0]), EMPTY_D]
    assert evaluate_voc_map(dets, gts, 1).map == pytest.approx(1.0)


def test_input_validation():
    with pytest.raises(ValueError):
        evaluate_voc_map([EMPTY_D], [EMPTY_G, EMPTY_G], 1)
    with pytest.raises(ValueError):
        evaluate_voc_map([D([A], [0.5], [3])], [EMPTY_G], 2)
    with pytest.raises(ValueError):
        ImageDetections(boxes=np.zeros((2, 4)), scores=np.zeros(3), labels=np.zeros(2, dtype=int))
    with pytest.raises(ValueError):
        ImageGroundTruth(boxes=np.zeros((2, 3)), labels=np.zeros(2, dtype=int))


# ---------------------------------------------------------------- COCO oracle


def _random_dataset(seed: int, n_images: int = 30, num_classes: int = 3):
    """Integer pixel boxes (so IoUs are bit-identical to pycocotools'), quantized scores (ties)."""
    rng = np.random.default_rng(seed)
    dets, gts, sizes = [], [], []
    gt_classes = num_classes - 1  # the last class never has GT (must be excluded by both)
    for i in range(n_images):
        w, h = int(rng.integers(64, 640)), int(rng.integers(64, 480))
        sizes.append((w, h))
        m = int(rng.integers(0, 7)) if i % 10 else 0  # some images without GT
        g_boxes, g_labels = [], []
        for _ in range(m):
            if g_boxes and rng.random() < 0.4:  # crowd: a same-class neighbour overlapping the last box
                x1, y1, x2, y2 = g_boxes[-1]
                dx = int(rng.integers(0, max(2, (x2 - x1) // 3)))
                dy = int(rng.integers(0, max(2, (y2 - y1) // 3)))
                g_boxes.append([x1 + dx, y1 + dy, x2 + dx, y2 + dy])
                g_labels.append(g_labels[-1])
                continue
            bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            g_boxes.append([x, y, x + bw, y + bh])
            g_labels.append(int(rng.integers(0, gt_classes)))
        d_boxes, d_scores, d_labels = [], [], []
        if i % 7 != 3:  # some images without detections
            for box, lab in zip(g_boxes, g_labels):
                for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # misses and duplicates
                    bw, bh = box[2] - box[0], box[3] - box[1]
                    k = int(rng.choice([3, 6, 12, 24]))  # localisation noise from sloppy to tight
                    jx = rng.integers(-max(1, bw // k), max(1, bw // k) + 1, size=2)
                    jy = rng.integers(-max(1, bh // k), max(1, bh // k) + 1, size=2)
                    nb = [box[0] + jx[0], box[1] + jy[0], box[2] + jx[1], box[3] + jy[1]]
                    if nb[2] - nb[0] < 2 or nb[3] - nb[1] < 2:
                        continue
                    d_boxes.append(nb)
                    d_labels.append(lab if rng.random() > 0.1 else int(rng.integers(0, num_classes)))
                    d_scores.append(round(float(rng.uniform(0.2, 1.0)) * 20) / 20)  # ties on purpose
            for _ in range(int(rng.integers(0, 5))):  # background false positives
                bw, bh = int(rng.integers(4, w // 2)), int(rng.integers(4, h // 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                d_boxes.append([x, y, x + bw, y + bh])
                d_labels.append(int(rng.integers(0, num_classes)))
                d_scores.append(round(float(rng.uniform(0.0, 0.9)) * 20) / 20)
        if i == 5:  # > 100 detections of one class in one image: exercises the maxDets cap
            for _ in range(130):
                bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                d_boxes.append([x, y, x + bw, y + bh])
                d_labels.append(0)
                d_scores.append(float(rng.uniform(0.0, 1.0)))
        gts.append(G(np.array(g_boxes, dtype=float).reshape(-1, 4), np.array(g_labels, dtype=int)))
        d_boxes_arr = np.array(d_boxes, dtype=float).reshape(-1, 4)
        dets.append(D(d_boxes_arr, np.array(d_scores), np.array(d_labels, dtype=int)))
    return dets, gts, sizes


def _to_coco(dets, gts, sizes, num_classes):
    images, annotations, results = [], [], []
    ann_id = 1  # pycocotools treats id 0 as "unmatched": ids must start at 1
    for img_id, (d, g, (w, h)) in enumerate(zip(dets, gts, sizes), start=1):
        images.append({"id": img_id, "width": w, "height": h})
        for box, lab in zip(g.boxes.tolist(), g.labels.tolist()):
            bw, bh = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": lab + 1,
                    "bbox": [box[0], box[1], bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
            ann_id += 1
        for box, s, lab in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            results.append(
                {
                    "image_id": img_id,
                    "category_id": lab + 1,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": s,
                }
            )
    categories = [{"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _cocoeval_stats(dets, gts, sizes, num_classes) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict, results = _to_coco(dets, gts, sizes, num_classes)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


# Seeds chosen so that the oracle also catches: VOC-style matching used for COCO
# (crowded same-class GT), ties in IoU resolved to the first GT instead of the last
# (seed 1), and a missing / per-image instead of per-class maxDets cap (seed 0).
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_map_matches_pycocotools(seed):
    pytest.importorskip("pycocotools")
    num_classes = 3
    dets, gts, sizes = _random_dataset(seed, num_classes=num_classes)
    stats = _cocoeval_stats(dets, gts, sizes, num_classes)
    ours = evaluate_coco_map(dets, gts, num_classes)
    # Sanity: the data set is not trivial.
    assert 0.05 < ours["map_50_95"] < 0.95
    # Exact up to float summation: boxes are integer pixels, so our IoUs are bit-identical
    # to pycocotools' (no threshold case can flip); area range "all" and iscrowd=0 make
    # its ignore logic a no-op. The remaining difference is pycocotools' precision
    # tp / (tp + fp + 2.2e-16) and summation order (observed |diff| ~ 1e-16).
    assert ours["map_50_95"] == pytest.approx(stats[0], abs=1e-9)
    assert ours["map_50"] == pytest.approx(stats[1], abs=1e-9)
    assert ours["map_75"] == pytest.approx(stats[2], abs=1e-9)


def test_coco_iou_tie_goes_to_later_gt():
    # GT A = [5,0,15,10], GT A2 = [7,0,17,10]; det1 = [6,0,16,10] (score .9):
    #   IoU(det1, A) = IoU(det1, A2) = 90/110 ~ 0.818 exactly tied -> pycocotools takes A2 (the later GT).
    # det2 = [4,0,14,10] (score .8): IoU with A = 90/110 ~ 0.818, with A2 = 70/130 ~ 0.538.
    #   pycocotools: A is free -> det2 TP for every t <= 0.818: t = .50 ... .80 (7 thresholds) AP 1,
    #   t = .85, .90, .95: both FP -> AP 0.  map_50_95 = 7/10.
    #   (ties -> first GT would give: t=.5 AP 1, t=.55...80 AP 51/101, rest 0 -> ~0.403)
    gts = [G([[5, 0, 15, 10], [7, 0, 17, 10]], [0, 0])]
    dets = [D([[6, 0, 16, 10], [4, 0, 14, 10]], [0.9, 0.8], [0, 0])]
    ours = evaluate_coco_map(dets, gts, 1)
    assert ours["map_50_95"] == pytest.approx(0.7, abs=1e-12)
    assert ours["map_75"] == pytest.approx(1.0, abs=1e-12)
    if importlib.util.find_spec("pycocotools") is not None:
        stats = _cocoeval_stats(dets, gts, [(32, 32)], 1)
        assert stats[0] == pytest.approx(0.7, abs=1e-9)


def test_coco_max_dets_cap_is_per_image_and_class():
    # 101 detections on one GT image: the true box scored lowest falls outside the top 100.
    gts = [G([A], [0])]
    boxes = [FAR] * 100 + [A]
    scores = [0.9] * 100 + [0.1]
    dets = [D(boxes, scores, [0] * 101)]
    assert evaluate_coco_map(dets, gts, 1)["map_50"] == 0.0
    assert evaluate_coco_map(dets, gts, 1, max_dets=101)["map_50"] > 0.0
    # The cap is per class: 100 other-class detections do not push it out.
    dets = [D(boxes, scores, [1] * 100 + [0])]
    assert evaluate_coco_map(dets, gts, 2)["map_50"] == pytest.approx(1.0)
