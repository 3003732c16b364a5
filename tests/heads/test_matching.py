"""Hungarian assignment against brute force, padding and empty images, and the batched cost matrix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from uhd_core.heads.box_iou import bbox_iou
from uhd_core.heads.matching import match_queries, pairwise_match_cost


def _brute_force_min_cost(cost: np.ndarray) -> float:
    """Minimum total cost over all one-to-one assignments of min(Q, M) pairs."""
    q, m = cost.shape
    if q >= m:
        return min(sum(cost[rows[j], j] for j in range(m)) for rows in itertools.permutations(range(q), m))
    return min(sum(cost[i, cols[i]] for i in range(q)) for cols in itertools.permutations(range(m), q))


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_equals_brute_force_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    q, m = rng.integers(1, 6, size=2)
    cost = rng.normal(size=(1, q, m)).astype(np.float32)
    b, qi, ti = match_queries(torch.from_numpy(cost), torch.ones(1, m, dtype=torch.bool))
    assert len(b) == min(q, m)
    assert len(set(qi.tolist())) == len(qi) and len(set(ti.tolist())) == len(ti)  # one-to-one
    total = float(cost[0, qi.numpy(), ti.numpy()].sum())
    assert total == pytest.approx(_brute_force_min_cost(cost[0]), abs=1e-5)


def test_padding_columns_and_empty_images_are_skipped():
    cost = torch.rand(3, 4, 3)
    valid = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    b, qi, ti = match_queries(cost, valid)
    pairs = sorted(zip(b.tolist(), ti.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 2), (2, 1)]  # every valid target exactly once, none of image 1


def test_no_targets_at_all_gives_empty_indices():
    b, qi, ti = match_queries(torch.rand(2, 5, 1), torch.zeros(2, 1, dtype=torch.bool))
    assert b.numel() == qi.numel() == ti.numel() == 0


def test_pairwise_cost_matches_elementwise_formula():
    torch.manual_seed(0)
    prob = torch.rand(2, 5, 3).softmax(-1)
    pred = torch.rand(2, 5, 4) * 0.5 + 0.2
    gt = torch.rand(2, 4, 4) * 0.5 + 0.2
    labels = torch.tensor([[0, 1, -1, -1], [1, 1, 0, -1]])
    cost = pairwise_match_cost(prob, pred, gt, labels, cls_weight=1.0, l1_weight=5.0, iou_weight=2.0, iou_kind="giou")
    assert cost.shape == (2, 5, 4)
    for b, q, t in [(0, 3, 1), (1, 0, 2), (1, 4, 0)]:
        expect = (-prob[b, q, labels[b, t]] + 5.0 * (pred[b, q] - gt[b, t]).abs().sum()
                  + 2.0 * (1 - bbox_iou(pred[b, q], gt[b, t], "giou")))
        assert cost[b, q, t] == pytest.approx(float(expect), abs=1e-5)
