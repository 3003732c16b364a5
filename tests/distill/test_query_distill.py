"""Query distillation: KL is zero for identical models, box-L1 trains the student, pairing, teacher loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uhd_core.checkpoint import save_checkpoint
from uhd_core.config import build_config
from uhd_core.distill.base import cosine_ramp
from uhd_core.distill.query import QueryDistiller, load_teacher
from uhd_core.errors import CheckpointError, ConfigError
from uhd_core.models.detector import build_detector

SMALL = {"arch": "transformer", "d_model": 16, "heads": 2, "layers": 1, "dim_feedforward": 16, "num_queries": 4,
         "use_fpn": True, "fpn_layout": "s4-s8-s16"}


def _model(seed: int, **extra):
    torch.manual_seed(seed)
    return build_detector(build_config(None, {**SMALL, **extra}))


def _distiller(teacher, match: str = "hungarian", kl: float = 1.0, box: float = 1.0, temperature: float = 2.0):
    return QueryDistiller(teacher.eval(), (64, 64), kl_weight=kl, box_l1_weight=box, temperature=temperature,
                          query_match=match)


@pytest.mark.parametrize("match", ["hungarian", "index"])
def test_terms_are_zero_when_student_equals_teacher(match):
    teacher = _model(0)
    student = _model(0).eval()
    x = torch.rand(3, 3, 64, 64)
    total, terms = _distiller(teacher, match)(student(x), None, x, 1.0)
    assert float(terms["distill_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["distill_box_l1"]) == pytest.approx(0.0, abs=1e-6)
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-6)


def test_kl_is_positive_and_scaled_by_t_squared_when_models_differ():
    teacher, student = _model(0), _model(1).eval()
    x = torch.rand(2, 3, 64, 64)
    out = student(x)
    _, t1 = _distiller(teacher, "index", temperature=1.0)(out, None, x, 1.0)
    assert float(t1["distill_kl"]) > 0
    # manual KL(teacher || student) at T=1 on index pairs, mean over queries
    t_out = teacher(x)
    t_p = t_out["logits"].softmax(-1)
    s_logp = out["logits"].log_softmax(-1)
    manual = (t_p * (t_p.log() - s_logp)).sum(-1).mean()
    assert float(t1["distill_kl"]) == pytest.approx(float(manual.detach()), rel=1e-4)


def test_box_l1_term_sends_gradient_into_the_student():
    """The original computed this term on a detached student; here it must train the student."""
    teacher, student = _model(0), _model(1)
    x = torch.rand(2, 3, 64, 64)
    total, terms = _distiller(teacher, kl=0.0, box=1.0)(student(x), None, x, 1.0)
    assert float(terms["distill_box_l1"]) > 0
    total.backward()
    box_grads = [p.grad for p in student.head.bbox_embed.parameters()]
    assert all(g is not None for g in box_grads) and sum(float(g.abs().sum()) for g in box_grads) > 0
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen


def test_scale_multiplies_the_added_loss():
    teacher, student = _model(0), _model(1).eval()
    x = torch.rand(2, 3, 64, 64)
    out = student(x)
    full, _ = _distiller(teacher)(out, None, x, 1.0)
    half, _ = _distiller(teacher)(out, None, x, 0.5)
    zero, _ = _distiller(teacher)(out, None, x, 0.0)
    assert float(half.detach()) == pytest.approx(0.5 * float(full.detach()), rel=1e-5) and float(zero.detach()) == 0.0


def test_hungarian_pairing_undoes_a_query_permutation():
    """A student whose queries are the teacher's in another order distils to zero only with matching."""
    teacher = _model(0)
    student = _model(0).eval()
    with torch.no_grad():
        teacher.backbone.query_embed.mul_(30.0)  # make the queries' predictions clearly different
        student.backbone.query_embed.copy_(teacher.backbone.query_embed[[2, 0, 3, 1]])
    x = torch.rand(2, 3, 64, 64)
    out = student(x)
    _, matched = _distiller(teacher, "hungarian")(out, None, x, 1.0)
    _, by_index = _distiller(teacher, "index")(out, None, x, 1.0)
    # matched pairs are the same computation (float noise only); index pairs are different queries
    assert float(matched["distill_box_l1"]) < 1e-7 and float(matched["distill_kl"]) < 1e-7
    assert float(by_index["distill_box_l1"]) > 1e-5


def test_teacher_with_other_query_count():
    teacher = _model(0, num_queries=6)
    student = _model(1, num_queries=4).eval()
    x = torch.rand(2, 3, 64, 64)
    total, terms = _distiller(teacher, "hungarian")(student(x), None, x, 1.0)
    assert torch.isfinite(total)


def test_cosine_ramp():
    assert cosine_ramp(0.0) == 0.0 and cosine_ramp(1.0) == pytest.approx(1.0)
    assert cosine_ramp(0.5) == pytest.approx(0.5)
    assert cosine_ramp(0.25) < 0.5 < cosine_ramp(0.75)


def _save_teacher(path: Path, model, **cfg_extra) -> None:
    cfg = build_config(None, {**SMALL, **cfg_extra})
    save_checkpoint(path, {"config": cfg.model_dump(mode="json"), "model": model.state_dict(), "ema": None})


def test_load_teacher_takes_architecture_and_size_from_its_checkpoint(tmp_path):
    teacher = _model(0, img_size="96x96", layers=2)
    _save_teacher(tmp_path / "t.pt", teacher, img_size="96x96", layers=2)
    student_cfg = build_config(None, {**SMALL, "teacher_ckpt": str(tmp_path / "t.pt"), "distill_kl": 1.0})
    loaded, tcfg = load_teacher(student_cfg)
    assert tcfg.layers == 2 and tcfg.img_size == (96, 96)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_teacher_overrides_that_do_not_fit_the_weights_are_an_error(tmp_path):
    _save_teacher(tmp_path / "t.pt", _model(0))
    cfg = build_config(None, {**SMALL, "teacher_ckpt": str(tmp_path / "t.pt"), "teacher_layers": 3})
    with pytest.raises(CheckpointError, match="--teacher-"):
        load_teacher(cfg)


def test_index_pairing_needs_equal_query_counts(tmp_path):
    _save_teacher(tmp_path / "t.pt", _model(0, num_queries=6), num_queries=6)
    cfg = build_config(None, {**SMALL, "teacher_ckpt": str(tmp_path / "t.pt"), "distill_query_match": "index"})
    with pytest.raises(ConfigError, match="6 queries, the student 4"):
        load_teacher(cfg)


def test_cnn_teacher_is_refused(tmp_path):
    cnn = build_detector(build_config(None, {"cnn_width": 8}))
    save_checkpoint(tmp_path / "c.pt", {"config": build_config(None, {"cnn_width": 8}).model_dump(mode="json"),
                                        "model": cnn.state_dict(), "ema": None})
    with pytest.raises(ConfigError, match="must be a transformer checkpoint"):
        load_teacher(build_config(None, {**SMALL, "teacher_ckpt": str(tmp_path / "c.pt")}))
