"""uhd_core.anchors: IoU/ratio metrics by hand, k-means recovery, evolution, the coverage report."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from uhd_core.anchors import (
    ANCHOR_T,
    anchor_fitness,
    anchor_report,
    evolve_anchors,
    fit_anchors,
    format_anchor_string,
    kmeans_anchors,
    parse_anchor_string,
    ratio_metric,
    wh_iou,
)
from uhd_core.data.dataset import load_box_sizes
from uhd_core.errors import ConfigError, DataError

CENTRES = np.array([[0.05, 0.10], [0.20, 0.40], [0.60, 0.50]])


def _clusters(seed: int = 0, per: int = 200, spread: float = 0.03) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c * np.exp(rng.normal(0.0, spread, size=(per, 2))) for c in CENTRES])


def test_wh_iou_hand_values():
    iou = wh_iou(np.array([[0.2, 0.3], [0.2, 0.2], [0.1, 0.4]]), np.array([[0.2, 0.3], [0.4, 0.4], [0.4, 0.1]]))
    assert iou.shape == (3, 3)
    assert iou[0, 0] == pytest.approx(1.0)  # identical
    assert iou[1, 1] == pytest.approx(0.04 / 0.16)  # nested: small area / large area
    assert iou[2, 2] == pytest.approx(0.01 / 0.07)  # same area, transposed shape


def test_ratio_metric_hand_values():
    r = ratio_metric(np.array([[0.2, 0.3], [0.1, 0.4]]), np.array([[0.2, 0.3], [0.4, 0.3], [0.4, 0.1]]))
    assert r.shape == (2, 3)
    assert r[0, 0] == pytest.approx(1.0)
    assert r[0, 1] == pytest.approx(0.5)  # width 2x too small, height exact
    assert r[1, 2] == pytest.approx(0.25)  # 4x off on both sides: exactly 1/ANCHOR_T, so not matched
    assert not r[1, 2] > 1 / ANCHOR_T


def test_kmeans_recovers_well_separated_cluster_centres():
    anchors = kmeans_anchors(_clusters(), k=3, seed=0)
    assert anchors.shape == (3, 2)
    np.testing.assert_allclose(anchors, CENTRES, rtol=0.03)  # CENTRES are already sorted by area


def test_kmeans_is_deterministic_per_seed_and_sorted_by_area():
    wh = np.random.default_rng(1).uniform(0.02, 0.9, size=(300, 2))
    a = kmeans_anchors(wh, 5, seed=7)
    np.testing.assert_array_equal(a, kmeans_anchors(wh, 5, seed=7))
    area = a[:, 0] * a[:, 1]
    assert (np.diff(area) >= 0).all()
    assert len(np.unique(a, axis=0)) == 5


def test_fewer_distinct_boxes_than_anchors_warns_and_never_duplicates():
    wh = np.array([[0.1, 0.2]] * 5 + [[0.3, 0.3]] * 5)
    with pytest.warns(UserWarning, match="2 distinct box sizes for 5 anchors"):
        anchors = kmeans_anchors(wh, 5, seed=0)
    np.testing.assert_array_equal(anchors, [[0.1, 0.2], [0.3, 0.3]])


def test_exactly_k_distinct_boxes_gives_them_without_warning():
    wh = np.array([[0.3, 0.3], [0.1, 0.2], [0.1, 0.2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(kmeans_anchors(wh, 2, seed=0), [[0.1, 0.2], [0.3, 0.3]])


def test_evolution_never_lowers_fitness_and_is_deterministic():
    wh = np.random.default_rng(2).uniform(0.02, 0.9, size=(200, 2))
    start = np.array([[0.03, 0.03], [0.05, 0.06], [0.9, 0.9]])  # a poor start leaves room to improve
    f0 = anchor_fitness(wh, start)
    short = evolve_anchors(wh, start, generations=30, seed=3)
    long = evolve_anchors(wh, start, generations=120, seed=3)
    # same seed: the long run replays the short one first, so fitness is monotone in generations
    assert f0 <= anchor_fitness(wh, short) <= anchor_fitness(wh, long)
    assert anchor_fitness(wh, long) > f0
    np.testing.assert_array_equal(long, evolve_anchors(wh, start, generations=120, seed=3))
    np.testing.assert_array_equal(evolve_anchors(wh, start, generations=0, seed=3), start)


def test_fit_anchors_beats_or_matches_kmeans_alone():
    wh = _clusters(seed=4, per=60, spread=0.3)
    km = kmeans_anchors(wh, 3, seed=0)
    fitted = fit_anchors(wh, 3, seed=0, evolve_generations=100)
    assert anchor_fitness(wh, fitted) >= anchor_fitness(wh, km)


def test_report_hand_case():
    wh = np.array([[0.1, 0.1], [0.4, 0.4], [0.9, 0.05]])
    anchors = np.array([[0.1, 0.1], [0.2, 0.2]])
    rep = anchor_report(wh, anchors)
    assert rep.num_boxes == 3
    assert [a.num_best_matched for a in rep.anchors] == [1, 2]
    assert (rep.anchors[1].w, rep.anchors[1].h) == (0.2, 0.2)
    assert rep.bpr == pytest.approx(2 / 3)  # the 0.9x0.05 box is > 4x off from both anchors
    assert rep.anchors_above_threshold == pytest.approx((2 + 1 + 0) / 3)  # 0.4 vs 0.1 is exactly 4x: no
    assert rep.mean_best_iou == pytest.approx((1.0 + 0.25 + 0.01 / 0.075) / 3)
    assert rep.fitness == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["anchors"][1] == {"w": 0.2, "h": 0.2, "num_best_matched": 2}
    assert d["bpr"] == rep.bpr and d["num_boxes"] == 3


def test_anchor_string_round_trip_and_errors():
    text = format_anchor_string(np.array([[0.0812341, 0.1043212], [0.15, 0.2]]))
    assert text == "0.081234,0.104321 0.150000,0.200000"
    np.testing.assert_allclose(parse_anchor_string(text), [[0.081234, 0.104321], [0.15, 0.2]])
    for bad in ("0.1", "0.1,0.2,0.3", "a,b", "", "0.1,1.5", "0,0.2"):
        with pytest.raises(ConfigError):
            parse_anchor_string(bad)


def test_load_box_sizes(tiny_yolo_dir):
    wh = load_box_sizes(tiny_yolo_dir, (0,))
    assert wh.ndim == 2 and wh.shape[1] == 2 and len(wh) > 20
    assert ((wh > 0) & (wh <= 1)).all()
    train = load_box_sizes(tiny_yolo_dir, (0,), train_split_only=True, seed=42)
    assert 0 < len(train) < len(wh)
    with pytest.raises(DataError, match="no boxes of --classes 5"):
        load_box_sizes(tiny_yolo_dir, (5,))
