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
from uhd_core.data.images import INTERPOLATIONS
from uhd_core.errors import CheckpointError, UhdError, bounded, first_line
from uhd_core.models.detector import Detector, build_detector
from uhd_core.models.loading import load_detector


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

        from uhd_core.export.onnx_export import REEXPORT, load_export, ort_source

        _, meta = load_export(path)  # one CheckpointError line for an empty/damaged/foreign file
        if not meta["config"]:
            raise CheckpointError(f"{bounded(path)}: not a UHD export (no uhd_config metadata); "
                                  "export it with `uhd export`")
        try:
            self.cfg = build_config(None, base=stored_config(meta["config"]))
        except UhdError as exc:
            raise CheckpointError(f"{bounded(path)}: its uhd_config metadata is not a valid UHD config "
                                  f"({first_line(exc)}): the file was edited after export; {REEXPORT}") from None
        pre = meta["preprocess"]
        self.img_size = tuple(pre["img_size"])
        self.resize_interpolation = pre.get("resize", self.cfg.resize_interpolation)
        if self.resize_interpolation not in INTERPOLATIONS:
            raise CheckpointError(f"{bounded(path)}: its uhd_preprocess metadata names an unknown resize "
                                  f"{bounded(self.resize_interpolation)!r}: the file was edited after export; {REEXPORT}")
        self.merged = bool(meta["merged"])
        self.session = ort.InferenceSession(ort_source(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        self.static_batch = batch_dim if isinstance(batch_dim, int) else None  # a static export takes only that
        self.output_names = [o.name for o in self.session.get_outputs()]
        detector = build_detector(self.cfg).eval()
        self.head = None if self.merged else detector.head
        self._probe(path, detector)

    def _probe(self, path: Path, detector: Detector) -> None:
        """One run on zeros: the graph must take the metadata's input size and give outputs of the
        shapes the ``uhd_config`` model gives (else the metadata belongs to another model)."""
        from uhd_core.export.onnx_export import REEXPORT

        h, w = self.img_size
        x = np.zeros((self.static_batch or 1, 3, h, w), np.float32)
        try:
            got = self.session.run(None, {self.input_name: x})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"{bounded(path)}: ONNX Runtime cannot run it at its metadata's input size "
                                  f"{h}x{w} ({first_line(exc)}); {REEXPORT}") from None
        if self.merged:
            fits = got[0].ndim == 3 and got[0].shape[-1] == 6
            want = "(B, N, 6) detections"
        else:
            with torch.no_grad():
                ref = detector.head.export_outputs(detector(torch.zeros(1, 3, h, w)))
            want = {name: list(ref[name].shape[1:]) for name in self.output_names if name in ref}
            fits = len(want) == len(got) and all(list(g.shape[1:]) == want[name]
                                                 for name, g in zip(self.output_names, got, strict=True))
        if not fits:
            shapes = [list(g.shape) for g in got]
            raise CheckpointError(f"{bounded(path)}: its graph outputs {shapes} do not fit the model its uhd_config "
                                  f"metadata describes ({bounded(want)}): the metadata was edited or copied from "
                                  f"another model; {REEXPORT}")

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
    return TorchPredictor(*load_detector(path, use_ema))
