"""Fast NMS of the anchor head: one implementation for eager decode and export, checked against loops."""

from __future__ import annotations

import ast
import inspect

import torch

import uhd_core.heads.anchor as anchor
from uhd_core.heads.box_iou import bbox_iou


def _loop_fast_nms(box, flat_scores, num_classes, topk, nms_iou):
    """The definition, one image and one pair at a time: candidates = top P by score; candidate i is
    dropped when any earlier (higher-scoring) candidate j of its class has IoU > nms_iou with it."""
    rows = []
    pre = min(flat_scores.shape[1], anchor.NMS_CANDIDATES_PER_DET * topk)
    for b in range(box.shape[0]):
        scores, flat = flat_scores[b].topk(pre)
        cls, loc = flat % num_classes, flat // num_classes
        kept = []
        for i in range(pre):
            dropped = any(int(cls[j]) == int(cls[i])
                          and float(bbox_iou(box[b, loc[j]][None], box[b, loc[i]][None], "iou")) > nms_iou
                          for j in range(i))
            kept.append(0.0 if dropped else float(scores[i]))
        kept = torch.tensor(kept)
        order = kept.topk(min(topk, pre)).indices
        rows.append(torch.cat([kept[order, None], cls[order, None].float(), box[b, loc[order]]], dim=1))
    return torch.stack(rows)


def test_fast_nms_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(2, 30, 2, generator=gen)
    sizes = 0.1 + 0.3 * torch.rand(2, 30, 2, generator=gen)
    box = torch.cat([centers, sizes], dim=-1)
    flat_scores = torch.rand(2, 30 * 3, generator=gen)
    got = anchor.fast_nms(box, flat_scores, 3, topk=10, nms_iou=0.3)
    want = _loop_fast_nms(box, flat_scores, 3, topk=10, nms_iou=0.3)
    assert got.shape == want.shape == (2, 10, 6)
    assert torch.allclose(got, want, atol=1e-6)
    unsuppressed = anchor.fast_nms(box, flat_scores, 3, topk=10, nms_iou=1.0)  # IoU never exceeds 1
    assert not torch.equal(got, unsuppressed), "the case suppresses nothing; it would not test the suppression"


def test_decode_anchor_is_fast_nms():
    box = torch.rand(1, 12, 4)
    scores = torch.rand(1, 12, 2)
    assert torch.equal(anchor.decode_anchor(box, scores, 5), anchor.fast_nms(box, scores.reshape(1, 24), 2, 5))


def test_the_suppression_is_written_once():
    """Eager decode and export post-process share fast_nms (they were two copies that could drift)."""
    tree = ast.parse(inspect.getsource(anchor))
    writers = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
               and "nms_iou) &" in ast.get_source_segment(inspect.getsource(anchor), node)]
    assert writers == ["fast_nms"]
