"""The DETR head: loss with 0 and many boxes, gradients, decoding; the transformer backbone."""

from __future__ import annotations

import pytest
import torch

from uhd_core.config import build_config
from uhd_core.heads.detr import DetrHead
from uhd_core.models.detector import build_detector
from uhd_core.models.transformer import TinyDETR, sine_position_encoding


def _outputs(batch: int = 2, queries: int = 6, classes: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(batch, queries, classes + 1, generator=g, requires_grad=True),
            "boxes": torch.rand(batch, queries, 4, generator=g).mul(0.4).add(0.2).requires_grad_()}


def test_loss_with_no_boxes_is_only_no_object_classification():
    head = DetrHead(8, 1)
    out = _outputs()
    labels = torch.full((2, 1), -1)
    losses = head.loss(out, head.build_targets(torch.zeros(2, 1, 4), labels, (1, 1)))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["l1"] == 0 and losses["iou"] == 0
    expect = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 2), torch.ones(12, dtype=torch.long))
    assert float(losses["cls"].detach()) == pytest.approx(float(expect.detach()), rel=1e-5)  # all no-object
    losses["loss"].backward()
    assert out["logits"].grad.abs().sum() > 0


def test_loss_with_more_boxes_than_queries_is_finite_and_matches_every_query():
    head = DetrHead(8, 2)
    out = _outputs(queries=4, classes=2)
    boxes = torch.rand(2, 9, 4) * 0.3 + 0.3
    labels = torch.randint(0, 2, (2, 9))
    losses = head.loss(out, head.build_targets(boxes, labels, (1, 1)))
    assert all(torch.isfinite(v) for v in losses.values())
    b, q, t = head.match(out, boxes, labels)
    assert len(b) == 8  # min(4 queries, 9 boxes) per image
    losses["loss"].backward()
    assert out["boxes"].grad.abs().sum() > 0


def test_a_perfect_prediction_has_zero_box_terms():
    head = DetrHead(8, 1)
    gt = torch.tensor([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.1, 0.2]]])
    boxes = torch.full((1, 5, 4), 0.05)
    boxes[0, 1], boxes[0, 3] = gt[0, 1], gt[0, 0]
    logits = torch.zeros(1, 5, 2)
    targets = head.build_targets(gt, torch.zeros(1, 2, dtype=torch.long), (1, 1))
    losses = head.loss({"logits": logits, "boxes": boxes}, targets)
    assert float(losses["l1"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["iou"]) == pytest.approx(0.0, abs=1e-5)


def test_decode_sorts_by_best_real_class_probability():
    head = DetrHead(8, 2)
    logits = torch.tensor([[[0.0, 0.0, 5.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])
    boxes = torch.rand(1, 3, 4)
    det = head.decode({"logits": logits, "boxes": boxes}, topk=50)
    assert det.shape == (1, 3, 6)
    probs = logits.softmax(-1)[0, :, :2]
    assert det[0, :, 0].tolist() == pytest.approx(sorted(probs.max(-1).values.tolist(), reverse=True))
    assert det[0, 0, 1] == 1 and det[0, 1, 1] == 0  # query 2 (class 1) first, then query 1 (class 0)
    assert torch.equal(det[0, 0, 2:], boxes[0, 2])
    assert head.decode({"logits": logits, "boxes": boxes}, topk=2).shape == (1, 2, 6)


def test_position_encoding_depends_on_size_device_dtype_not_cache():
    a = sine_position_encoding(4, 6, 16, device=torch.device("cpu"), dtype=torch.float32)
    assert a.shape == (24, 16)
    b = sine_position_encoding(8, 6, 16, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert b.shape == (48, 16) and b.dtype == torch.bfloat16
    assert not torch.allclose(a[:6], a[6:12])  # rows differ in y
    assert len({tuple(r.tolist()) for r in a}) == 24  # every cell its own code


@pytest.mark.parametrize(("use_fpn", "layout", "tokens"), [
    (False, "s2-s2-s4-s8", 32 * 32), (True, "s2-s2-s4-s8", 2368), (True, "s4-s8-s16", 336),
])
def test_token_counts_at_64x64(use_fpn, layout, tokens):
    model = TinyDETR(d_model=16, heads=2, layers=1, dim_feedforward=16, num_queries=3, use_fpn=use_fpn,
                     fpn_layout=layout)
    memory, pos = model.encode(torch.rand(1, 3, 64, 64))
    assert memory.shape == (1, tokens, 16) and pos.shape == (tokens, 16)


def test_transformer_runs_at_other_input_sizes():
    cfg = build_config(None, {"arch": "transformer", "use_fpn": True, "fpn_layout": "s4-s8-s16", "d_model": 16,
                              "heads": 2, "layers": 1, "dim_feedforward": 16, "num_queries": 5})
    model = build_detector(cfg).eval()
    for h, w in [(64, 64), (96, 128), (48, 80)]:
        out = model(torch.rand(2, 3, h, w))
        assert out["logits"].shape == (2, 5, 2) and out["boxes"].shape == (2, 5, 4)
        assert ((out["boxes"] >= 0) & (out["boxes"] <= 1)).all()


def test_attention_matches_a_reference_softmax_attention():
    from uhd_core.models.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(16, 4)
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    out = attn(q, k, k)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.load_state_dict(attn.out_proj.state_dict())
    expect, _ = mha(q, k, k)
    assert torch.allclose(out, expect, atol=1e-5)
