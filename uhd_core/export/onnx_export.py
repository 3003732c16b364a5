"""ONNX export of a Detector: raw head outputs or a merged post-process, with parity checks.

The graph is traced with PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
the dynamo exporter needs ``onnxscript``, which UHD does not depend on.

Input: ``images`` (B, 3, H, W) float32 RGB in 0..1, NCHW, resized (no letterbox) with
``cfg.resize_interpolation``; the model file records this in its ``uhd_preprocess`` metadata.

Outputs (fixed names and order):

- raw (``merge_postprocess=False``): the head's ``export_outputs`` — CenterNet ``hm`` (sigmoid
  heatmap), ``off``, ``wh``; anchor ``pred``; transformer ``logits``, ``boxes``;
- merged (``merge_postprocess=True``): ``detections`` (B, N, 6) score, class_id, cx, cy, w, h
  (normalized), sorted by score, N = min(topk, candidates) — what ``head.decode`` returns.

Dynamic shapes: the merged graph is the head's ``export_postprocess`` (by default its ``decode``).
Those must not freeze sizes at the export size: ``k = min(topk, n)`` comes from
``heads.tracing.traced_min`` (torchvision's ``_topk_min`` trick), and the anchor head overrides
``export_postprocess`` with a reformulation whose grid and Fast-NMS mask come from the traced shape.
``verify_onnx`` and the tests check the merged output against ``head.decode``.
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from uhd_core.config import RunConfig
# The names below are this module's public API (``uhd_core.inference``, ``export.api`` and the tests
# import them from here); each lives in the module of its responsibility.
from uhd_core.export.onnx_common import (
    INPUT_NAME,
    MERGED_NAME,
    ExportError,
    ExportWrapper,
    Shape,
    graph_inputs,
    graph_shapes,
    ort_session,
    ort_source,
)
from uhd_core.export.onnx_macs import count_macs
from uhd_core.export.onnx_meta import REEXPORT, load_export, read_metadata, read_preprocess
from uhd_core.export.onnx_verify import TIE_EPS, compare_detections, non_finite_tensors, verify_onnx
from uhd_core.models.detector import Detector, count_parameters
from uhd_core.outputs import write_output

__all__ = [
    "INPUT_NAME", "MERGED_NAME", "REEXPORT", "TIE_EPS", "ExportError", "ExportReport", "ExportWrapper", "Shape",
    "compare_detections", "count_macs", "export_onnx", "load_export", "non_finite_tensors", "ort_source",
    "read_metadata", "read_preprocess", "verify_onnx",
]


@dataclass
class ExportReport:
    """What export_onnx wrote. Shapes come from the ONNX graph: ints, or dim names for dynamic dims."""

    path: Path
    size_bytes: int
    params: int
    opset: int
    inputs: dict[str, Shape]
    outputs: dict[str, Shape]
    simplified: bool
    exporter: str = "torchscript"
    macs: int | None = None
    warnings: list[str] = field(default_factory=list)


def _dynamic_axes(output_names: Sequence[str], sample: Sequence[torch.Tensor],
                  merged: bool) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name, tensor in zip(output_names, sample):
        if merged:
            axes[name] = {0: "batch", 1: "N"}
        elif tensor.dim() == 4:  # dense maps (B, C, H/s, W/s)
            axes[name] = {0: "batch", 2: "grid_height", 3: "grid_width"}
        else:  # set predictions (B, Q, X): Q is fixed by the model
            axes[name] = {0: "batch"}
    return axes


def _simplify(model: onnx.ModelProto, samples: Sequence[np.ndarray],
              dynamic_axes: Mapping[str, Mapping[int, str]] | None) -> tuple[onnx.ModelProto | None, str]:
    """-> (simplified model or None, why it was not used). Never raises.

    No ``overwrite_input_shapes``: onnxsim then only folds constant subgraphs, so dynamic dims stay
    symbolic. The result is kept only if its inputs are unchanged, its outputs match the original
    graph's on every sample (several shapes when dynamic) and no named dynamic output dim was fixed
    (merged ``N`` may legitimately become a constant, e.g. DETR's query count: its name is restored).
    """
    try:
        import onnxsim
    except Exception as exc:  # noqa: BLE001 - a broken install must not break the export
        return None, f"onnxsim not available ({type(exc).__name__}: {exc}); the graph is not simplified"
    try:
        kwargs: dict[str, Any] = {}
        if "certify" in inspect.signature(onnxsim.simplify).parameters:
            kwargs["certify"] = False  # newer onnxsim's optional Z3 proof: slow, and parity is checked below
        simplified, ok = onnxsim.simplify(copy.deepcopy(model), check_n=0, **kwargs)
        if not ok:
            return None, "onnxsim reported a failed check; kept the unsimplified graph"
        before, after = graph_shapes(model.graph.input), graph_shapes(simplified.graph.input)
        if before != after or [o.name for o in model.graph.output] != [o.name for o in simplified.graph.output]:
            return None, f"onnxsim changed the graph inputs/outputs ({before} -> {after}); kept the unsimplified graph"
        for out in simplified.graph.output:
            dims = out.type.tensor_type.shape.dim
            for axis, dim_name in (dynamic_axes or {}).get(out.name, {}).items():
                if dims[axis].HasField("dim_value") and dim_name != "N":
                    return None, f"onnxsim fixed dynamic dim {out.name}[{axis}]; kept the unsimplified graph"
                dims[axis].Clear()
                dims[axis].dim_param = dim_name
        ref_session, got_session = ort_session(model), ort_session(simplified)
        for sample in samples:
            ref = ref_session.run(None, {INPUT_NAME: sample})
            got = got_session.run(None, {INPUT_NAME: sample})
            for r, g in zip(ref, got):
                if r.shape != g.shape or not np.allclose(r, g, rtol=1e-4, atol=1e-5):
                    return None, (f"onnxsim output differs from the unsimplified graph at input {list(sample.shape)}; "
                                  "kept the unsimplified graph")
        return simplified, ""
    except Exception as exc:  # noqa: BLE001 - onnxsim failures come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"onnxsim failed ({type(exc).__name__}: {first[:200]}); kept the unsimplified graph"


def export_onnx(model: Detector, cfg: RunConfig, out_path: str | Path, *, img_size: tuple[int, int] | None = None,
                opset: int = 17, merge_postprocess: bool = False, dynamic: bool = False, topk: int = 100,
                batch_size: int = 1, simplify: bool = True) -> ExportReport:
    """Trace ``model`` on a (batch_size, 3, H, W) input and write the ONNX file atomically.

    ``img_size`` (H, W) defaults to ``cfg.img_size``. ``dynamic=True`` makes batch, height and width
    of ``images`` symbolic (``batch``, ``height``, ``width``; merged output dim 1 is ``N``). The
    model is copied to the CPU in eval mode; the caller's module is not changed.
    """
    out_path = Path(out_path)
    h, w = img_size if img_size is not None else cfg.img_size
    if topk < 1:
        raise ExportError(f"topk must be >= 1, got {topk}")
    model = copy.deepcopy(model).cpu().float().eval()
    wrapper = ExportWrapper(model, merge_postprocess=merge_postprocess, topk=topk).eval()
    dummy = torch.rand(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sample = wrapper(dummy)
    sample_list = [sample] if isinstance(sample, torch.Tensor) else list(sample)
    output_names = list(wrapper.output_names or ())

    axes = _dynamic_axes(output_names, sample_list, merge_postprocess) if dynamic else None
    onnx_model, report_warnings = _trace(wrapper, dummy, output_names, opset, axes)
    simplified = False
    if simplify:
        samples = [dummy.numpy()]
        if dynamic:  # a second batch and size, so a dim that onnxsim fixed cannot go unnoticed
            samples.append(torch.rand(batch_size + 1, 3, max(16, h // 2), max(16, w // 2),
                                      generator=torch.Generator().manual_seed(1)).numpy())
        result, reason = _simplify(onnx_model, samples, axes)
        if result is None:
            report_warnings.append(reason)
        else:
            onnx.checker.check_model(result)
            onnx_model, simplified = result, True
    _stamp_metadata(onnx_model, cfg, (h, w), output_names, merged=merge_postprocess, topk=topk, dynamic=dynamic)
    data = onnx_model.SerializeToString()
    write_output(out_path, data, "--output")

    try:
        macs: int | None = count_macs(out_path)
    except Exception as exc:  # noqa: BLE001 - the count is informational
        macs = None
        report_warnings.append(f"MACs not counted ({type(exc).__name__}: {exc})")
    return ExportReport(
        path=out_path, size_bytes=len(data), params=count_parameters(model), opset=opset,
        inputs=graph_inputs(onnx_model), outputs=graph_shapes(onnx_model.graph.output), simplified=simplified,
        macs=macs, warnings=report_warnings,
    )


def _trace(wrapper: ExportWrapper, dummy: torch.Tensor, output_names: list[str], opset: int,
           axes: dict[str, dict[int, str]] | None) -> tuple[onnx.ModelProto, list[str]]:
    """-> (the checked ONNX graph of ``wrapper`` traced on ``dummy``, the tracer/exporter warnings)."""
    report_warnings: list[str] = []
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                wrapper, (dummy,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=output_names, dynamic_axes=axes, do_constant_folding=True,
            )
        except Exception as exc:  # noqa: BLE001 - exporter errors come in many types
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    for c in caught:  # tracer warnings name code that may freeze a shape; the legacy-exporter notice is dropped
        if issubclass(c.category, (DeprecationWarning, FutureWarning)):
            continue
        kind = "tracer" if issubclass(c.category, torch.jit.TracerWarning) else "exporter"
        msg = f"{kind}: {Path(c.filename).name}:{c.lineno}: {str(c.message).strip().splitlines()[0]}"
        if msg not in report_warnings:
            report_warnings.append(msg)
    onnx_model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(onnx_model)
    return onnx_model, report_warnings


def _stamp_metadata(onnx_model: onnx.ModelProto, cfg: RunConfig, hw: tuple[int, int], output_names: list[str], *,
                    merged: bool, topk: int, dynamic: bool) -> None:
    """Write the ``uhd_*`` metadata (see :mod:`uhd_core.export.onnx_meta`) into ``onnx_model`` in place."""
    if merged:  # the detection count is named N in every merged graph (dynamic ones already are)
        dims = onnx_model.graph.output[0].type.tensor_type.shape.dim
        if len(dims) == 3 and not dims[1].dim_param:
            dims[1].dim_param = "N"
    h, w = hw
    preprocess = {"color": "RGB", "scale": "0..1 float32", "layout": "NCHW", "resize": cfg.resize_interpolation,
                  "img_size": [h, w], "letterbox": False}
    meta = {
        "uhd_preprocess": json.dumps(preprocess),
        "uhd_config": cfg.model_dump_json(),
        "uhd_outputs": json.dumps(output_names),
        "uhd_merged": "1" if merged else "0",
        "uhd_topk": str(topk),
        "uhd_dynamic": "1" if dynamic else "0",
    }
    # onnxsim stamps 14 ``onnxsim.*`` entries (its version, per-op counts): noise for a deployer
    # reading the file's metadata, so only other producers' entries and UHD's own are kept.
    kept = {p.key: p.value for p in onnx_model.metadata_props if not p.key.startswith("onnxsim")}
    del onnx_model.metadata_props[:]
    onnx.helper.set_model_props(onnx_model, {**kept, **meta})
