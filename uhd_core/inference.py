"""Run a trained model — a checkpoint or an exported ONNX file — on images, the way it was trained.

``load_predictor(path)`` returns a Predictor whose ``predict(images)`` takes uint8 RGB images already
resized to ``img_size`` (with ``resize_interpolation``; ``uhd_core.data`` does that) and returns
(B, K, 6) detections: score, class_id, cx, cy, w, h normalized, by descending score. Checkpoints use
the EMA weights when they have them; ONNX files carry their preprocessing and config in their
metadata (``uhd_preprocess``, ``uhd_config``), and raw-output files are decoded by the same head code
as the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from uhd_core.config import RunConfig, build_config, stored_config
from uhd_core.data.dataset import images_to_input
from uhd_core.engine.checkpoint import load_checkpoint
from uhd_core.errors import CheckpointError, UhdError, first_line
from uhd_core.models.detector import Detector, build_detector


class Predictor(Protocol):
    cfg: RunConfig
    img_size: tuple[int, int]
    resize_interpolation: str

    def predict(self, images: np.ndarray, topk: int) -> np.ndarray:
        """images (B, H, W, 3) uint8 RGB at img_size -> (B, K, 6) float32."""


class TorchPredictor:
    def __init__(self, model: Detector, cfg: RunConfig) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.img_size = tuple(cfg.img_size)
        self.resize_interpolation = cfg.resize_interpolation

    @torch.no_grad()
    def predict(self, images: np.ndarray, topk: int) -> np.ndarray:
        x = images_to_input(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), torch.device("cpu"))
        return self.model.head.decode(self.model(x), topk).float().numpy()


class OnnxPredictor:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        from uhd_core.export.onnx_export import read_metadata

        try:
            meta = read_metadata(path)
        except UhdError:
            raise CheckpointError(f"{path}: not a UHD export (no uhd_* metadata); export it with `uhd export`") from None
        if not meta["config"]:
            raise CheckpointError(f"{path}: not a UHD export (no uhd_config metadata); export it with `uhd export`")
        self.cfg = build_config(None, base=stored_config(meta["config"]))
        pre = meta["preprocess"]
        self.img_size = tuple(pre.get("img_size", self.cfg.img_size))
        self.resize_interpolation = pre.get("resize", self.cfg.resize_interpolation)
        self.merged = bool(meta["merged"])
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.static_batch = batch_dim if isinstance(batch_dim, int) else None  # a static export takes only that
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.head = None if self.merged else build_detector(self.cfg).head.eval()

    def predict(self, images: np.ndarray, topk: int) -> np.ndarray:
        step = self.static_batch or len(images)
        if len(images) > step:
            return np.concatenate([self.predict(images[i:i + step], topk) for i in range(0, len(images), step)])
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
        if len(x) < step:  # pad a short last batch of a static-batch export
            x = np.concatenate([x, np.zeros((step - len(x), *x.shape[1:]), np.float32)])
            return self.predict_padded(x, topk)[: len(images)]
        return self.predict_padded(x, topk)

    def predict_padded(self, x: np.ndarray, topk: int) -> np.ndarray:
        outputs = self.session.run(None, {self.input_name: x})
        if self.merged:
            return outputs[0][:, :topk]
        raw = {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs, strict=True)}
        with torch.no_grad():
            return self.head.decode_exported(raw, topk).float().numpy()


def load_predictor(path: str | Path, use_ema: bool | None = None) -> Predictor:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint (.pt) or an exported model (.onnx)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.suffix.lower() == ".onnx":
        try:
            return OnnxPredictor(path)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnx/onnxruntime raise many types for a bad file
            first = first_line(exc)
            raise CheckpointError(f"{path}: cannot be read as an ONNX model ({first[:200]})") from None
    ckpt = load_checkpoint(path)
    cfg = build_config(None, base={**stored_config(ckpt["config"]), "resume": "", "ckpt": ""})
    has_ema = bool(ckpt.get("ema"))
    state = ckpt["ema"]["module"] if (has_ema if use_ema is None else use_ema) else ckpt["model"]
    model = build_detector(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored config ({str(exc).splitlines()[0]})") from None
    return TorchPredictor(model, cfg)
