"""Transformer teacher -> transformer student: distillation on the per-query predictions.

Terms (both computed on pairs of student and teacher queries):

- ``distill_kl``: KL(teacher || student) of the class distributions (num_classes + no-object) at
  temperature T, scaled by T^2 (Hinton et al.), averaged over pairs;
- ``distill_box_l1``: L1 between student and teacher boxes (cxcywh normalized, mean over the four
  coordinates), weighted by the teacher's object probability so the boxes of queries the teacher
  calls "no object" do not pull the student. The gradient flows into the student (the original
  computed this term on a detached student, so it trained nothing).

Pairing (``--distill-query-match``): queries of two separately trained DETRs are not aligned by
index (which query predicts what is an accident of training), so by default each image's student
queries are matched one-to-one to the teacher's by a cost over their predictions (box L1 + 1 - GIoU +
total-variation distance of the class distributions), like the ground-truth matching. This also
allows different query counts (min(Qs, Qt) pairs). ``index`` pairs query i with query i, as the
original did; it needs equal counts.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from uhd_core.checkpoint import load_checkpoint
from uhd_core.config import RunConfig
from uhd_core.distill.base import DISTILLERS, Distiller
from uhd_core.errors import CheckpointError, ConfigError, UhdError, first_line
from uhd_core.heads.box_iou import bbox_iou
from uhd_core.heads.matching import match_queries
from uhd_core.models.detector import Detector
from uhd_core.models.loading import CLEARED_ON_LOAD, build_with_weights, checkpoint_config, checkpoint_weights

#: RunConfig field of the student -> the teacher field it overrides when set.
TEACHER_OVERRIDES = {
    "teacher_arch": "arch", "teacher_num_queries": "num_queries", "teacher_d_model": "d_model",
    "teacher_heads": "heads", "teacher_layers": "layers", "teacher_dim_feedforward": "dim_feedforward",
    "teacher_use_skip": "use_skip", "teacher_activation": "activation", "teacher_use_fpn": "use_fpn",
}


def teacher_config(cfg: RunConfig, stored: dict) -> RunConfig:
    """The teacher's config: the one stored in its checkpoint, with the --teacher-* flags on top."""
    overrides = {dst: getattr(cfg, src) for src, dst in TEACHER_OVERRIDES.items()
                 if getattr(cfg, src) not in ("", None)}
    return checkpoint_config({"config": stored}, overrides, clear=(*CLEARED_ON_LOAD, "teacher_ckpt"))


def _teacher_does_not_fit(path: str, exc: Exception) -> UhdError:
    if isinstance(exc, ValueError):  # the --teacher-* overrides describe no buildable model
        return ConfigError(f"--teacher-ckpt {path}: {exc}")
    return CheckpointError(f"--teacher-ckpt {path} does not match the teacher architecture ({first_line(exc)}); "
                           "check the --teacher-* overrides")


def load_teacher(cfg: RunConfig) -> tuple[Detector, RunConfig]:
    """Build the teacher from --teacher-ckpt (EMA weights when the checkpoint has them), frozen, in eval mode."""
    ckpt = load_checkpoint(cfg.teacher_ckpt)
    tcfg = teacher_config(cfg, ckpt["config"])
    if tcfg.arch != "transformer":
        raise ConfigError(f"--teacher-ckpt {cfg.teacher_ckpt}: a {tcfg.arch} teacher cannot be distilled per query; "
                          "it must be a transformer checkpoint")
    if tcfg.num_classes != cfg.num_classes:
        raise ConfigError(f"--teacher-ckpt {cfg.teacher_ckpt}: teacher has {tcfg.num_classes} classes, the student "
                          f"{cfg.num_classes}; they must predict the same classes")
    if cfg.distill_query_match == "index" and tcfg.num_queries != cfg.num_queries:
        raise ConfigError(f"--teacher-ckpt {cfg.teacher_ckpt}: teacher has {tcfg.num_queries} queries, the student "
                          f"{cfg.num_queries}; --distill-query-match index pairs queries by position and needs equal "
                          "counts (use --distill-query-match hungarian, or --num-queries "
                          f"{tcfg.num_queries})")
    state, _ = checkpoint_weights(ckpt, cfg.teacher_ckpt)  # EMA weights when it has them
    teacher = build_with_weights(tcfg, state, lambda exc: _teacher_does_not_fit(cfg.teacher_ckpt, exc))  # eval mode
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, tcfg


class QueryDistiller(Distiller):
    loss_terms = ("distill_kl", "distill_box_l1")

    def __init__(self, teacher: Detector, teacher_img_size: tuple[int, int], *, kl_weight: float,
                 box_l1_weight: float, temperature: float, query_match: str = "hungarian") -> None:
        super().__init__()
        self.teacher = teacher
        self.teacher_img_size = tuple(teacher_img_size)
        self.kl_weight = kl_weight
        self.box_l1_weight = box_l1_weight
        self.temperature = temperature
        self.query_match = query_match

    def pair_queries(self, s_prob: torch.Tensor, s_boxes: torch.Tensor, t_prob: torch.Tensor, t_boxes: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch_idx, student_query_idx, teacher_query_idx); inputs (B, Q*, C+1) probs and (B, Q*, 4) boxes."""
        if self.query_match == "index":
            b, q = s_prob.shape[:2]
            batch_idx = torch.arange(b, device=s_prob.device).repeat_interleave(q)
            query_idx = torch.arange(q, device=s_prob.device).repeat(b)
            return batch_idx, query_idx, query_idx
        with torch.no_grad():
            class_tv = 0.5 * torch.cdist(s_prob, t_prob, p=1)
            l1 = torch.cdist(s_boxes, t_boxes, p=1)
            giou = bbox_iou(s_boxes[:, :, None, :], t_boxes[:, None, :, :], "giou")
            cost = class_tv + 5.0 * l1 + 2.0 * (1.0 - giou)
        valid = torch.ones(t_prob.shape[:2], dtype=torch.bool, device=t_prob.device)
        return match_queries(cost, valid)

    def forward(self, student_outputs: dict[str, torch.Tensor], student_features: torch.Tensor,
                teacher_images: torch.Tensor, scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            t_out = self.teacher(teacher_images)
        s_logits, s_boxes = student_outputs["logits"].float(), student_outputs["boxes"].float()
        t_logits, t_boxes = t_out["logits"].float(), t_out["boxes"].float()
        b_idx, s_idx, t_idx = self.pair_queries(s_logits.softmax(-1).detach(), s_boxes.detach(),
                                                t_logits.softmax(-1), t_boxes)
        temp = self.temperature
        s_logp = F.log_softmax(s_logits[b_idx, s_idx] / temp, -1)  # (P, C+1)
        t_logp = F.log_softmax(t_logits[b_idx, t_idx] / temp, -1)
        kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum") / max(len(b_idx), 1) * temp * temp
        t_object = 1.0 - t_logits[b_idx, t_idx].softmax(-1)[:, -1]  # teacher's P(some object), (P,)
        box_err = (s_boxes[b_idx, s_idx] - t_boxes[b_idx, t_idx]).abs().mean(-1)
        box_l1 = (box_err * t_object).sum() / t_object.sum().clamp(min=1e-6)
        total = scale * (self.kl_weight * kl + self.box_l1_weight * box_l1)
        return total, {"distill_kl": kl.detach(), "distill_box_l1": box_l1.detach()}


def check_query_teacher_files(cfg: RunConfig) -> None:
    """--teacher-ckpt must name a file (checked before any run dir exists; read by the builder)."""
    if cfg.teacher_ckpt and not Path(cfg.teacher_ckpt).expanduser().is_file():
        raise CheckpointError(f"--teacher-ckpt {cfg.teacher_ckpt}: no such checkpoint file")


@DISTILLERS.register("query")
def build_query_distiller(cfg: RunConfig, device: torch.device) -> QueryDistiller:
    teacher, tcfg = load_teacher(cfg)
    size = cfg.teacher_img_size or tcfg.img_size
    return QueryDistiller(teacher, size, kl_weight=cfg.distill_kl, box_l1_weight=cfg.distill_box_l1,
                          temperature=cfg.distill_temperature, query_match=cfg.distill_query_match).to(device)

