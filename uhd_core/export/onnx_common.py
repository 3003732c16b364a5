"""What every ONNX export module shares: tensor names, the error type, the traced wrapper, ORT sessions.

The graph contract itself (inputs, outputs, dynamic dims) is described in
:mod:`uhd_core.export.onnx_export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from uhd_core.errors import UhdError
from uhd_core.models.detector import Detector
from uhd_core.outputs import native_path_ok

INPUT_NAME = "images"
MERGED_NAME = "detections"

Shape = list[int | str]


class ExportError(UhdError):
    """The model could not be exported or the exported file is unusable."""


class ExportWrapper(nn.Module):
    """images (B, 3, H, W) float RGB 0..1 -> the exported outputs.

    ``merge_postprocess=False``: a tuple of the head's ``export_outputs`` in ``output_names`` order.
    ``merge_postprocess=True``: one tensor ``detections`` (B, N, 6) score, class_id, cx, cy, w, h.
    """

    def __init__(self, model: Detector, *, merge_postprocess: bool = False, topk: int = 100,
                 output_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.merge_postprocess = merge_postprocess
        self.topk = topk
        if merge_postprocess:
            output_names = (MERGED_NAME,)
        elif output_names is None:
            output_names = model.head.output_names
        self.output_names: tuple[str, ...] | None = tuple(output_names) if output_names else None

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.model(images)
        if self.merge_postprocess:
            return self.model.head.export_postprocess(outputs, self.topk)
        raw = self.model.head.export_outputs(outputs)
        if self.output_names is None:  # a head that does not name its outputs: its dict order
            self.output_names = tuple(raw)
        return tuple(raw[name] for name in self.output_names)


def graph_shapes(values: Sequence[onnx.ValueInfoProto]) -> dict[str, Shape]:
    """{name: dims} of ONNX value infos; each dim an int, or its dim name ("?" when unnamed)."""
    out: dict[str, Shape] = {}
    for vi in values:
        dims: Shape = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        out[vi.name] = dims
    return out


def graph_inputs(model: onnx.ModelProto) -> dict[str, Shape]:
    """:func:`graph_shapes` of the graph inputs that are real inputs, not initializers."""
    init = {t.name for t in model.graph.initializer}
    return graph_shapes([i for i in model.graph.input if i.name not in init])


def ort_session(model: onnx.ModelProto | bytes | str | Path) -> Any:
    """A one-thread CPU ``onnxruntime.InferenceSession`` for a model, its bytes or its file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiny models: one thread is fastest and deterministic
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(data, Path):
        data = ort_source(data)
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def ort_source(path: str | Path) -> str | bytes:
    """What to hand ``onnxruntime.InferenceSession`` for the file ``path``: the path, or the file's
    bytes when its name is not valid UTF-8 (ONNX Runtime takes paths as UTF-8 strings)."""
    return str(path) if native_path_ok(path) else Path(path).read_bytes()
