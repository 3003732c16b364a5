"""The utod family: backbone shapes and sizes, its options, its presets, and a short real training run
whose exported ONNX scores what the checkpoint scores."""

from __future__ import annotations

import pytest
import torch

from uhd_core.checkpoint import load_checkpoint
from uhd_core.config import RunConfig, build_config
from uhd_core.engine.api import run_training
from uhd_core.errors import ConfigError
from uhd_core.evaluation import evaluate_model
from uhd_core.export.api import export_checkpoint
from uhd_core.models.detector import build_detector, count_parameters
from uhd_core.models.utod import UtodBackbone

WIDTHS = (16, 24, 32, 48, 64)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("sppf", [True, False])
def test_backbone_is_stride_8_and_widens_to_8c(residual, sppf):
    net = UtodBackbone(8, "relu", residual, sppf).eval()
    out = net(torch.rand(2, 3, 64, 96))
    assert net.stride == 8 and out.shape == (2, 32 if sppf else 64, 8, 12) and net.out_channels == out.shape[1]
    assert (net.proj3 is not None) == residual
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns)  # every conv has a BN to fold into (int8 later)
    assert not any(isinstance(m, torch.nn.SiLU) for m in net.modules())


def test_residual_changes_the_features():
    torch.manual_seed(0)
    a = UtodBackbone(8, "relu", True).eval()
    b = UtodBackbone(8, "relu", False).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("proj3")})
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(a(x), b(x))


def test_the_width_ladder_presets_span_0p1_to_2_million_parameters():
    sizes = {}
    for w in WIDTHS:
        cfg = build_config(f"utod_w{w}", {})
        assert cfg.arch == "utod" and cfg.cnn_width == w and cfg.activation == "relu" and cfg.auto_anchors
        sizes[w] = count_parameters(build_detector(cfg))
    assert 0.1e6 < sizes[16] < 0.15e6 and 1.5e6 < sizes[64] < 2.5e6
    assert list(sizes.values()) == sorted(sizes.values())


def test_options_are_validated_by_the_family():
    cfg = build_config(None, {"arch": "utod", "arch_options": "lob=0,lob_depth=3,score=obj_quality,w_obj=8"})
    opts = cfg.family_options
    assert (opts.lob, opts.lob_depth, opts.score, opts.w_obj, opts.w_qual) == (False, 3, "obj_quality", 8.0, 16.0)
    assert build_detector(cfg).head.lob is None
    with pytest.raises(ConfigError, match="--arch utod has no option 'depth'"):
        build_config(None, {"arch": "utod", "arch_options": "depth=3"})
    with pytest.raises(ConfigError, match="score"):
        build_config(None, {"arch": "utod", "arch_options": "score=cls"})
    with pytest.raises(ConfigError, match="sides must be multiples of the UTOD output stride 8"):
        from uhd_core.config import check_implemented
        check_implemented(build_config(None, {"arch": "utod", "img_size": "60x60"}))


def test_two_epochs_train_and_the_exported_onnx_scores_the_checkpoints_map(tiny_yolo_dir, tmp_path):
    # Enough steps (batch 4) and no EMA, so the scores spread out: after a handful of steps they sit
    # within ~1e-6 of the prior, and ties that close let ONNX Runtime's rounding reorder the NMS.
    result = run_training(None, {
        "arch": "utod", "cnn_width": 8, "activation": "relu", "image_dir": str(tiny_yolo_dir),
        "runs_dir": str(tmp_path / "runs"), "epochs": 2, "batch_size": 4, "lr": 0.01, "num_workers": 0,
        "device": "cpu", "use_ema": False, "auto_anchors": True, "num_anchors": 4, "seed": 0, "conf_thresh": 0.01,
    }, tensorboard=False)
    assert result.epochs_done == 2
    ckpt = load_checkpoint(result.last_checkpoint)
    cfg = RunConfig(**ckpt["config"])
    assert len(cfg.anchors) == 4 and not cfg.auto_anchors  # fitted once by the head's prepare hook
    assert torch.allclose(ckpt["model"]["head.anchors"], torch.tensor(cfg.anchors, dtype=torch.float32))
    exports = [export_checkpoint(result.last_checkpoint, tmp_path / f"{name}.onnx", merge_postprocess=name == "merged",
                                 latency=False) for name in ("merged", "raw")]
    assert all(e.verified for e in exports), [e.problem for e in exports]
    merged, raw = (e.path for e in exports)
    reports = [evaluate_model(p, tiny_yolo_dir) for p in (result.last_checkpoint, merged, raw)]
    assert reports[0].num_images > 0
    for other in reports[1:]:
        assert other.map_voc == pytest.approx(reports[0].map_voc, abs=1e-3)
        assert other.coco_map_50_95 == pytest.approx(reports[0].coco_map_50_95, abs=1e-3)
