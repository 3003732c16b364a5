"""load_detector: the one way from a checkpoint file to a built detector (uhd_core/models/loading.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from uhd_core.checkpoint import save_checkpoint
from uhd_core.config import build_config
from uhd_core.errors import CheckpointError, ConfigError
from uhd_core.inference import load_predictor
from uhd_core.models.detector import build_detector
from uhd_core.models.loading import load_detector

REPO = Path(__file__).resolve().parents[2]
TINY = {"cnn_width": 8, "img_size": "64x64"}


def _save(path: Path, with_ema: bool, **extra) -> tuple[dict, dict]:
    """A checkpoint whose model and EMA weights differ; returns (model state, ema state)."""
    cfg = build_config(None, {**TINY, **extra})
    torch.manual_seed(0)
    model = build_detector(cfg).state_dict()
    torch.manual_seed(1)
    ema = build_detector(cfg).state_dict()
    save_checkpoint(path, {"config": {**cfg.model_dump(mode="json"), "resume": "old/run", "ckpt": "init.pt"},
                           "model": model, "ema": {"module": ema, "updates": 3} if with_ema else None})
    return model, ema


def _equal(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_ema_weights_by_default_model_weights_on_request(tmp_path):
    model_sd, ema_sd = _save(tmp_path / "c.pt", with_ema=True)
    model, cfg = load_detector(tmp_path / "c.pt")
    assert _equal(model, ema_sd) and not model.training
    assert cfg.cnn_width == 8 and cfg.resume == "" and cfg.ckpt == ""  # a loaded model resumes nothing
    model, _ = load_detector(tmp_path / "c.pt", use_ema=False)
    assert _equal(model, model_sd)


def test_overrides_go_on_top_of_the_stored_config(tmp_path):
    _save(tmp_path / "c.pt", with_ema=False)
    _, cfg = load_detector(tmp_path / "c.pt", overrides={"conf_thresh": 0.5})
    assert cfg.conf_thresh == 0.5 and cfg.cnn_width == 8


def test_ema_asked_of_a_checkpoint_without_is_one_config_error(tmp_path):
    # load_predictor(use_ema=True) used to index None (TypeError); now the same line as `uhd export --use-ema`
    _save(tmp_path / "c.pt", with_ema=False)
    with pytest.raises(ConfigError, match="holds no EMA weights"):
        load_predictor(tmp_path / "c.pt", use_ema=True)


def test_a_stored_config_that_does_not_build_is_one_checkpoint_error(tmp_path):
    # `uhd eval`/`predict` of such a file used to end in a ValueError traceback
    cfg = build_config(None, {"arch": "transformer", "d_model": 16, "heads": 2, "layers": 1, "num_queries": 4,
                              "dim_feedforward": 16})
    stored = {**cfg.model_dump(mode="json"), "heads": 3}  # edited: 16 is not divisible by 3
    save_checkpoint(tmp_path / "c.pt", {"config": stored, "model": build_detector(cfg).state_dict(), "ema": None})
    with pytest.raises(CheckpointError, match="weights do not fit the stored config .*divisible"):
        load_predictor(tmp_path / "c.pt")


def _reads_checkpoint_weights(tree: ast.AST) -> list[int]:
    """Lines that pick weights out of a checkpoint dict: x["ema"] or x.get("ema")."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "ema":
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "ema"):
            lines.append(node.lineno)
    return lines


def test_only_the_loader_picks_weights_out_of_a_checkpoint():
    """checkpoint -> config -> EMA -> build -> load is written once. The engine is exempt: resuming
    restores the EMA object and optimizer, and --ckpt initialises non-strictly (a training concern)."""
    allowed = {REPO / "uhd_core" / "models" / "loading.py"}
    offenders = []
    for path in sorted((REPO / "uhd_core").rglob("*.py")) + sorted((REPO / "bench").rglob("*.py")):
        if path in allowed or (REPO / "uhd_core" / "engine") in path.parents:
            continue
        offenders += [f"{path.relative_to(REPO)}:{line}"
                      for line in _reads_checkpoint_weights(ast.parse(path.read_text(encoding="utf-8")))]
    assert not offenders, "use uhd_core.models.loading (load_detector / checkpoint_weights):\n" + "\n".join(offenders)
