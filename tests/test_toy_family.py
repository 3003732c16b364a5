"""Issue 17's "done when": a family that exists only in this file trains, evaluates, exports and
round-trips through ONNX Runtime, with no edit to the config, the engine, the exporter or other tests.

The toy family is a backbone of two strided convs carrying the existing CenterNet head; its own
hyperparameters (width, stride) come through ``--arch-options``, validated by its own pydantic model.
It is registered by a fixture that unregisters it again, so no other test sees it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from uhd_core.config import build_config, check_implemented
from uhd_core.errors import ConfigError
from uhd_core.models.registry import BACKBONES, register_backbone, unregister_backbone
from uhd_core.registry import FAMILIES, FamilySpec
from uhd_runner import assert_one_error_line, run_uhd


class ToyOptions(BaseModel):
    """The toy family's own hyperparameters (``--arch-options width=8,stride=4``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(8, ge=4)
    stride: Literal[4, 8] = 8


class ToyBackbone(nn.Module):
    """(B, 3, H, W) -> (B, width, H / stride, W / stride): a conv stem at stride 2, then stride 2 or 4."""

    def __init__(self, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride // 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.out_channels = width
        self.stride = stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


TOY = FamilySpec("toy", heads=("centernet",), title="toy", stride_field="stride", options=ToyOptions,
                 smoke_config={"arch_options": "width=6"})


def build_toy(cfg) -> ToyBackbone:
    opts = cfg.family_options
    return ToyBackbone(opts.width, opts.stride)


@contextlib.contextmanager
def toy_family_registered() -> Iterator[FamilySpec]:
    register_backbone(TOY)(build_toy)
    try:
        yield TOY
    finally:
        unregister_backbone(TOY.name)


@pytest.fixture
def toy_family() -> Iterator[FamilySpec]:
    with toy_family_registered() as spec:
        yield spec


def test_registration_is_undone():
    with toy_family_registered():
        assert "toy" in FAMILIES and "toy" in BACKBONES
        assert build_config(None, {"arch": "toy"}).head_name == "centernet"
    assert "toy" not in FAMILIES and "toy" not in BACKBONES
    with pytest.raises(ConfigError, match="--arch: unknown architecture 'toy'; known: cnn, transformer"):
        build_config(None, {"arch": "toy"})


def test_toy_options_are_validated_by_the_family(toy_family):
    cfg = build_config(None, {"arch": "toy", "arch_options": "stride=4, width=12"})
    assert cfg.arch_options == (("stride", 4), ("width", 12))  # typed by ToyOptions, sorted
    assert cfg.family_options == ToyOptions(width=12, stride=4)
    assert cfg.model_dump(mode="json")["arch_options"] == {"stride": 4, "width": 12}
    assert build_config(None, {}, base=cfg.model_dump(mode="json")) == cfg  # a stored config reads back
    assert build_config(None, {"arch": "toy"}).family_options == ToyOptions()  # the family's defaults
    with pytest.raises(ConfigError, match="--arch-options: --arch toy has no option 'depth' "
                                          r"\(its options: width, stride\)"):
        build_config(None, {"arch": "toy", "arch_options": "depth=3"})
    with pytest.raises(ConfigError, match="--arch-options: stride: Input should be 4 or 8"):
        build_config(None, {"arch": "toy", "arch_options": "stride=16"})
    with pytest.raises(ConfigError, match="--arch-options: --arch cnn takes no options"):
        build_config(None, {"arch_options": "width=12"})
    # the grid stride is the family's own option: input sides must be multiples of it
    with pytest.raises(ConfigError, match="--img-size 36x36: sides must be multiples of --arch-options stride 8"):
        check_implemented(build_config(None, {"arch": "toy", "img_size": "36x36"}))
    check_implemented(build_config(None, {"arch": "toy", "img_size": "36x36", "arch_options": "stride=4"}))
    # --use-anchor picks the head named anchor, which the toy family does not carry
    with pytest.raises(ConfigError, match=r"--arch toy has no anchor head \(it has: centernet\); "
                                          "--use-anchor is a CNN head"):
        check_implemented(build_config(None, {"arch": "toy", "use_anchor": True, "auto_anchors": True}))


def test_bad_toy_option_on_the_command_line_is_one_error_line(toy_family, tiny_yolo_dir, tmp_path, monkeypatch):
    code, _, err = run_uhd(["train", "--arch", "toy", "--arch-options", "width=two", "--image-dir", tiny_yolo_dir,
                            "--runs-dir", tmp_path / "runs", "--no-tui"], monkeypatch)
    assert code == 2
    assert_one_error_line(err, "--arch-options: width: Input should be a valid integer")
    assert not (tmp_path / "runs").exists()


def test_toy_family_trains_evaluates_exports_and_round_trips(toy_family, tiny_yolo_dir, tmp_path, monkeypatch):
    from uhd_core.engine.api import run_training

    result = run_training(None, {
        "arch": "toy", "arch_options": "width=8,stride=4", "image_dir": str(tiny_yolo_dir),
        "runs_dir": str(tmp_path / "runs"), "exp_name": "toy", "epochs": 2, "batch_size": 4, "img_size": "32x32",
        "num_workers": 0, "device": "cpu", "seed": 0,
    }, tensorboard=False)
    assert result.epochs_done == 2 and result.evaluated
    ckpt = result.best_checkpoint or result.last_checkpoint
    assert ckpt is not None and ckpt.name.startswith(("best_toy_", "last_"))

    code, out, err = run_uhd(["eval", ckpt, "--image-dir", tiny_yolo_dir, "--json", tmp_path / "pt.json"],
                             monkeypatch)
    assert code == 0, err
    onnx_path = tmp_path / "toy.onnx"
    code, out, err = run_uhd(["export", ckpt, "--output", onnx_path, "--merge-postprocess"], monkeypatch)
    assert code == 0, err
    assert onnx_path.is_file() and "verified" in out.lower()
    code, out, err = run_uhd(["eval", onnx_path, "--image-dir", tiny_yolo_dir, "--json", tmp_path / "onnx.json"],
                             monkeypatch)
    assert code == 0, err
    pt, ox = (json.loads((tmp_path / name).read_text()) for name in ("pt.json", "onnx.json"))
    assert ox["map_voc"] == pytest.approx(pt["map_voc"], abs=1e-3) and ox["num_images"] == pt["num_images"] > 0  # ONNX Runtime scores as PyTorch does
