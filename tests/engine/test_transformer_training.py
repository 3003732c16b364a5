"""The transformer family end to end on the tiny synthetic folder: training lowers the loss, a
3-layer checkpoint grows to 4 layers, and a larger-input teacher distils into a student.

Small models (d_model 16, 1-2 layers, the 336-token layout) keep this to a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from uhd_core.engine.api import run_training
from uhd_core.engine.events import Event, WeightsLoaded, read_events
from uhd_core.errors import CheckpointError, ConfigError


def _settings(tiny_yolo_dir: Path, runs_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "image_dir": str(tiny_yolo_dir), "runs_dir": str(runs_dir), "arch": "transformer", "d_model": 16,
        "heads": 2, "layers": 1, "dim_feedforward": 32, "num_queries": 5, "use_fpn": True,
        "fpn_layout": "s4-s8-s16", "batch_size": 16, "num_workers": 0, "lr": 0.005, "log_interval": 1,
        "seed": 0, "device": "cpu", "aug_config": "uhd/aug.yaml", **extra,
    }


def _losses(run_dir: Path, term: str = "loss") -> list[float]:
    return [e["losses"][term] for e in read_events(run_dir / "events.jsonl") if e["event"] == "EpochEnded"]


@pytest.fixture(scope="module")
def three_layer_run(tiny_yolo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tf")
    settings = _settings(tiny_yolo_dir, root, exp_name="l3", layers=3, epochs=3)
    return run_training(None, settings, tensorboard=False), settings


def test_training_three_epochs_lowers_the_loss(three_layer_run):
    result, _ = three_layer_run
    losses = _losses(result.run_dir)
    assert len(losses) == 3 and losses[-1] < losses[0]
    started = [e for e in read_events(result.run_dir / "events.jsonl") if e["event"] == "RunStarted"][0]
    assert started["head"] == "detr" and started["loss_terms"] == ["loss", "cls", "l1", "iou"]
    assert sorted(p.name for p in result.run_dir.glob("best_transformer_*.pt"))


def test_grow_three_layers_to_four_reports_exactly_the_new_layers(three_layer_run, tmp_path):
    result, settings = three_layer_run
    seen: list[Event] = []
    # the preset asks for 4 layers; the small test widths are typed flags, the layer count is not
    small = {k: v for k, v in settings.items() if k != "layers"}
    grown = run_training("transformer_grow", {**small, "runs_dir": str(tmp_path), "exp_name": "l4", "epochs": 1,
                                              "ckpt": str(result.best_checkpoint)},
                         subscribers=[seen.append], tensorboard=False)
    (report,) = [e for e in seen if isinstance(e, WeightsLoaded)]
    assert report.missing and all(k.startswith(("backbone.encoder.3.", "backbone.decoder.3.")) for k in report.missing)
    assert {k.split(".")[1] for k in report.missing} == {"encoder", "decoder"}
    assert not report.unexpected and not report.mismatched
    source = torch.load(result.best_checkpoint, weights_only=True)
    state = source["ema"]["module"] if source["ema"] else source["model"]
    assert report.loaded == len(state) and report.total == report.loaded + len(report.missing)
    assert grown.epochs_done == 1
    # the text form (train.log) names the missing keys too
    log = (grown.run_dir / "train.log").read_text()
    assert "missing (fresh): backbone.encoder.3." in log
    # the same command with --resume instead of --ckpt continues the grown run (the stored --ckpt is history)
    resumed = run_training("transformer_grow", {**small, "runs_dir": str(tmp_path), "epochs": 2,
                                                "resume": str(grown.run_dir)}, tensorboard=False)
    assert resumed.epochs_done == 2 and resumed.run_dir == grown.run_dir


def test_grow_without_non_strict_is_an_error_listing_keys(three_layer_run, tmp_path):
    result, settings = three_layer_run
    with pytest.raises(CheckpointError, match=r"missing \d+ \(backbone\.encoder\.3\..*--ckpt-non-strict"):
        run_training(None, {**settings, "runs_dir": str(tmp_path), "layers": 4, "epochs": 1,
                            "ckpt": str(result.best_checkpoint)}, tensorboard=False)
    assert not (tmp_path / "default").exists() or not any((tmp_path / "default").glob("*.pt"))


def test_resume_with_ckpt_is_an_error(three_layer_run, tmp_path):
    result, settings = three_layer_run
    with pytest.raises(ConfigError, match="--resume and --ckpt"):
        run_training(None, {**settings, "resume": str(result.last_checkpoint), "ckpt": str(result.best_checkpoint)},
                     tensorboard=False)


def test_distil_from_a_larger_input_teacher(three_layer_run, tiny_yolo_dir, tmp_path):
    # the teacher: the same family trained at 96x96
    teacher = run_training(None, _settings(tiny_yolo_dir, tmp_path, exp_name="teacher", img_size="96x96", epochs=1,
                                           layers=2), tensorboard=False)
    seen: list[Event] = []
    student = run_training(None, _settings(tiny_yolo_dir, tmp_path, exp_name="student", epochs=2,
                                           teacher_ckpt=str(teacher.last_checkpoint), distill_kl=1.0,
                                           distill_box_l1=1.0, distill_temperature=2.0, distill_cosine=True),
                           subscribers=[seen.append], tensorboard=False)
    events = read_events(student.run_dir / "events.jsonl")
    started = [e for e in events if e["event"] == "RunStarted"][0]
    assert started["loss_terms"][-2:] == ["distill_kl", "distill_box_l1"]
    steps = [e for e in events if e["event"] == "StepEnded"]
    assert all(s["losses"]["distill_kl"] > 0 and s["losses"]["distill_box_l1"] > 0 for s in steps)
    # the checkpoint holds the student only
    ckpt = torch.load(student.last_checkpoint, weights_only=True)
    assert not any(k.startswith("teacher") for k in ckpt["model"])
    assert ckpt["config"]["img_size"] == [64, 64]


def test_distil_teacher_batches_carry_the_teacher_size(tiny_yolo_dir, tmp_path, monkeypatch):
    """The teacher sees the same augmented sample at its own size (recorded by a spy distiller)."""
    import uhd_core.distill.query as query

    teacher = run_training(None, _settings(tiny_yolo_dir, tmp_path, exp_name="t96", img_size="96x96", epochs=1),
                           tensorboard=False)
    shapes: list[tuple[int, ...]] = []
    original = query.QueryDistiller.forward

    def spy(self, student_outputs, student_features, teacher_images, scale):
        shapes.append(tuple(teacher_images.shape))
        return original(self, student_outputs, student_features, teacher_images, scale)

    monkeypatch.setattr(query.QueryDistiller, "forward", spy)
    run_training(None, _settings(tiny_yolo_dir, tmp_path, exp_name="s64", epochs=1, distill_kl=1.0,
                                 teacher_ckpt=str(teacher.last_checkpoint)), tensorboard=False)
    assert shapes and all(s[1:] == (3, 96, 96) for s in shapes)
