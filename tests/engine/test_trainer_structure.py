"""Issue 17 on the training side: a short loop in small modules, the model built once, a --resume
checkpoint read once, head- and teacher-specific preparation outside the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import uhd_core.engine.trainer as trainer_module
from uhd_core.config import build_config
from uhd_core.engine.api import create_trainer, run_trainer, run_training
from uhd_core.errors import CheckpointError
from uhd_core.heads.anchor import AnchorHead
from uhd_core.heads.base import HEADS
from uhd_core.heads.centernet import CenterNetHead
from tests.uhd_runner import run_uhd

REPO = Path(__file__).resolve().parents[2]


def _settings(tiny_yolo_dir: Path, runs_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"image_dir": str(tiny_yolo_dir), "runs_dir": str(runs_dir), "exp_name": "shape", "cnn_width": 8,
            "batch_size": 16, "num_workers": 0, "img_size": "64x64", "lr": 0.02, "seed": 0, "device": "cpu",
            "epochs": 1, **extra}


# The size rules (functions <= 79 lines, modules <= 400) hold for every module: tests/test_code_size.py.
def test_the_trainer_holds_no_head_or_teacher_specific_code():
    source = (REPO / "uhd_core" / "engine" / "trainer.py").read_text(encoding="utf-8")
    for word in ("anchor", "use_anchor", "teacher_backbone", "VIT_TEACHER", "official_file"):
        assert word not in source, word


def test_the_model_is_built_once_per_run(tiny_yolo_dir, tmp_path, monkeypatch):
    # Before: __init__ built throwaway models (a backbone, and a detector to size the checkpoints).
    built = []
    real = trainer_module.build_detector
    monkeypatch.setattr(trainer_module, "build_detector", lambda cfg: built.append(cfg) or real(cfg))
    result = run_training(None, _settings(tiny_yolo_dir, tmp_path), tensorboard=False)
    assert result.epochs_done == 1 and len(built) == 1


def test_resume_reads_its_checkpoint_once(tiny_yolo_dir, tmp_path, monkeypatch):
    # Before: `uhd train --resume DIR` read the checkpoint fully four times before training started.
    first = run_training(None, _settings(tiny_yolo_dir, tmp_path), tensorboard=False)
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(Path(f).name if isinstance(f, (str, Path)) else "?")
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    code, _out, err = run_uhd(["train", "--no-tui", "--resume", str(first.run_dir), "--epochs", "2"], monkeypatch)
    assert code == 0, err
    assert reads.count("last_0001.pt") == 1, reads


def test_auto_anchors_are_fitted_by_the_head_once_and_the_config_is_never_reassigned(tiny_yolo_dir, tmp_path,
                                                                                      monkeypatch):
    calls = []
    real = AnchorHead.prepare_config.__func__

    def spy(cls, cfg, train_boxes):
        calls.append(len(train_boxes))
        return real(cls, cfg, train_boxes)

    monkeypatch.setattr(AnchorHead, "prepare_config", classmethod(spy))
    trainer, writers = create_trainer(None, _settings(tiny_yolo_dir, tmp_path, use_anchor=True, auto_anchors=True),
                                      tensorboard=False)
    given = trainer.cfg
    result = run_trainer(trainer, writers)
    assert len(calls) == 1 and calls[0] > 0
    assert trainer.cfg is given and given.anchors == ()  # the trainer's config is never replaced mid-run
    stored = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert len(stored["anchors"]) == 3 and stored["auto_anchors"] is False
    assert [list(a) for a in ckpt["config"]["anchors"]] == [list(a) for a in stored["anchors"]]


def test_head_hooks_default_to_the_config_unchanged_and_anchor_stand_ins_keep_shapes():
    cfg = build_config(None, {"image_dir": "x"})
    boxes = [np.array([[0.5, 0.5, 0.2, 0.3]], dtype=np.float32)]
    assert CenterNetHead.prepare_config(cfg, boxes) is cfg and CenterNetHead.stand_in_config(cfg) is cfg
    auto = build_config(None, {"image_dir": "x", "use_anchor": True, "auto_anchors": True, "num_anchors": 2})
    assert HEADS.get(auto.head_name) is AnchorHead
    assert len(AnchorHead.stand_in_config(auto).anchors) == 2 and auto.anchors == ()
    fitted = AnchorHead.prepare_config(auto, boxes * 4)
    assert fitted.anchors and not fitted.auto_anchors
    given = build_config(None, {"image_dir": "x", "use_anchor": True, "anchors": "0.1,0.2"})
    assert AnchorHead.prepare_config(given, boxes) is given


def test_teacher_file_checks_live_with_the_distillers(tmp_path):
    from uhd_core.distill.factory import check_teacher_files

    vit = build_config(None, {"image_dir": "x", "teacher_backbone": str(tmp_path / "nope.pth"),
                              "teacher_backbone_arch": "vit_tiny", "distill_feat": 1.0})
    with pytest.raises(CheckpointError, match="nope.pth: no such file; obtain the official"):
        check_teacher_files(vit)
    query = build_config(None, {"image_dir": "x", "arch": "transformer", "teacher_ckpt": str(tmp_path / "t.pt")})
    with pytest.raises(CheckpointError, match="--teacher-ckpt .*t.pt: no such checkpoint file"):
        check_teacher_files(query)
    check_teacher_files(build_config(None, {"image_dir": "x"}))  # no teacher: nothing to check
