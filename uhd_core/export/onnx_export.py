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
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.errors import UhdError, bounded, first_line
from uhd_core.models.detector import Detector, count_parameters
from uhd_core.outputs import native_path_ok, write_output

INPUT_NAME = "images"
MERGED_NAME = "detections"
#: Rows whose scores differ by at most this much count as tied in :func:`compare_detections`.
TIE_EPS = 1e-6

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


# ------------------------------------------------------------------------------------------------
# Export

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


def _graph_shapes(values: Sequence[onnx.ValueInfoProto]) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for vi in values:
        dims: Shape = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
        out[vi.name] = dims
    return out


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


def _ort_session(model: onnx.ModelProto | bytes | str | Path) -> Any:
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
        before, after = _graph_shapes(model.graph.input), _graph_shapes(simplified.graph.input)
        if before != after or [o.name for o in model.graph.output] != [o.name for o in simplified.graph.output]:
            return None, f"onnxsim changed the graph inputs/outputs ({before} -> {after}); kept the unsimplified graph"
        for out in simplified.graph.output:
            dims = out.type.tensor_type.shape.dim
            for axis, dim_name in (dynamic_axes or {}).get(out.name, {}).items():
                if dims[axis].HasField("dim_value") and dim_name != "N":
                    return None, f"onnxsim fixed dynamic dim {out.name}[{axis}]; kept the unsimplified graph"
                dims[axis].Clear()
                dims[axis].dim_param = dim_name
        ref_session, got_session = _ort_session(model), _ort_session(simplified)
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
    report_warnings: list[str] = []

    axes = _dynamic_axes(output_names, sample_list, merge_postprocess) if dynamic else None
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

    if merge_postprocess:  # the detection count is named N in every merged graph (dynamic ones already are)
        dims = onnx_model.graph.output[0].type.tensor_type.shape.dim
        if len(dims) == 3 and not dims[1].dim_param:
            dims[1].dim_param = "N"
    preprocess = {"color": "RGB", "scale": "0..1 float32", "layout": "NCHW", "resize": cfg.resize_interpolation,
                  "img_size": [h, w], "letterbox": False}
    meta = {
        "uhd_preprocess": json.dumps(preprocess),
        "uhd_config": cfg.model_dump_json(),
        "uhd_outputs": json.dumps(output_names),
        "uhd_merged": "1" if merge_postprocess else "0",
        "uhd_topk": str(topk),
        "uhd_dynamic": "1" if dynamic else "0",
    }
    # onnxsim stamps 14 ``onnxsim.*`` entries (its version, per-op counts): noise for a deployer
    # reading the file's metadata, so only other producers' entries and UHD's own are kept.
    kept = {p.key: p.value for p in onnx_model.metadata_props if not p.key.startswith("onnxsim")}
    del onnx_model.metadata_props[:]
    onnx.helper.set_model_props(onnx_model, {**kept, **meta})
    data = onnx_model.SerializeToString()
    write_output(out_path, data, "--output")

    try:
        macs: int | None = count_macs(out_path)
    except Exception as exc:  # noqa: BLE001 - the count is informational
        macs = None
        report_warnings.append(f"MACs not counted ({type(exc).__name__}: {exc})")
    return ExportReport(
        path=out_path, size_bytes=len(data), params=count_parameters(model), opset=opset,
        inputs=_graph_shapes([i for i in onnx_model.graph.input if i.name not in
                              {t.name for t in onnx_model.graph.initializer}]),
        outputs=_graph_shapes(onnx_model.graph.output), simplified=simplified, macs=macs,
        warnings=report_warnings,
    )


# ------------------------------------------------------------------------------------------------
# Metadata, verification, cost

def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """All ``uhd_*`` metadata, decoded: preprocess/config (dicts), outputs (list), merged (bool), topk (int)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "uhd_preprocess" not in props:
        raise ExportError(f"{onnx_path} has no uhd_preprocess metadata (not exported by UHD)")
    return {
        "preprocess": json.loads(props["uhd_preprocess"]),
        "config": json.loads(props.get("uhd_config", "{}")),
        "outputs": json.loads(props.get("uhd_outputs", "[]")),
        "merged": props.get("uhd_merged", "0") == "1",
        "topk": int(props.get("uhd_topk", "100")),
        "dynamic": props.get("uhd_dynamic", "0") == "1",
    }


REEXPORT = "re-export it with `uhd export CHECKPOINT`"


def load_export(onnx_path: str | Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Read a UHD export for ``eval``/``predict``/``bench``: (the model, its decoded ``uhd_*`` metadata).

    Every way the file can be unusable is one ``CheckpointError`` line naming the file and what to
    do, instead of an ONNX Runtime/protobuf text: an empty file, a file that is not ONNX, an ONNX
    without UHD metadata, metadata that does not parse (edited after export), and metadata that
    does not describe this graph (an input size or output names other than the graph's: copied
    from another model). Whether the graph's output *shapes* fit ``uhd_config`` needs the model
    built from it: ``uhd_core.inference.OnnxPredictor`` checks that with one probe run.
    """
    from uhd_core.errors import CheckpointError

    path = Path(onnx_path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{bounded(path)}: cannot be read ({bounded(exc.strerror or exc)})") from None
    if size == 0:
        raise CheckpointError(f"{bounded(path)} is empty (0 bytes): {REEXPORT}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types for a damaged file
        raise CheckpointError(f"{bounded(path)}: cannot be read as an ONNX model ({first_line(exc)}); "
                              f"a damaged or truncated file? {REEXPORT}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "uhd_preprocess" not in props:
        raise CheckpointError(f"{bounded(path)}: not a UHD export (no uhd_* metadata); export it with `uhd export`")

    def damaged(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{bounded(path)}: its {key} metadata is damaged ({bounded(why)}): the file was "
                               f"edited after export; {REEXPORT}")

    decoded: dict[str, Any] = {}
    for key, default in (("uhd_preprocess", None), ("uhd_config", "{}"), ("uhd_outputs", "[]")):
        try:
            decoded[key] = json.loads(props.get(key, default))
        except ValueError as exc:
            raise damaged(key, f"not valid JSON: {exc}") from None
    pre, config, outputs = decoded["uhd_preprocess"], decoded["uhd_config"], decoded["uhd_outputs"]
    if not isinstance(pre, dict):
        raise damaged("uhd_preprocess", "not a JSON object")
    if not isinstance(config, dict):
        raise damaged("uhd_config", "not a JSON object")
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise damaged("uhd_outputs", "not a list of output names")
    hw = pre.get("img_size")
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                          for v in hw)):
        raise damaged("uhd_preprocess", f"img_size {hw!r} is not [height, width]")
    try:
        topk = int(props.get("uhd_topk", "100"))
    except ValueError:
        raise damaged("uhd_topk", f"{props['uhd_topk']!r} is not a number") from None
    meta = {"preprocess": pre, "config": config, "outputs": outputs, "merged": props.get("uhd_merged", "0") == "1",
            "topk": topk, "dynamic": props.get("uhd_dynamic", "0") == "1"}

    init = {t.name for t in model.graph.initializer}
    graph_inputs = _graph_shapes([i for i in model.graph.input if i.name not in init])
    other_model = "its metadata was edited or copied from another model"
    if len(graph_inputs) != 1 or INPUT_NAME not in graph_inputs or len(graph_inputs[INPUT_NAME]) != 4:
        raise CheckpointError(f"{bounded(path)}: its graph does not take one (B, 3, H, W) input {INPUT_NAME!r} "
                              f"(inputs {bounded(graph_inputs)}) although it has UHD metadata: {other_model}; {REEXPORT}")
    dims = graph_inputs[INPUT_NAME]
    fixed_hw = [d for d in dims[2:] if isinstance(d, int)]
    if (isinstance(dims[1], int) and dims[1] != 3) or (len(fixed_hw) == 2 and fixed_hw != hw):
        raise CheckpointError(f"{bounded(path)}: its uhd_preprocess metadata says img_size {hw[0]}x{hw[1]} but the "
                              f"graph takes {dims}: {other_model}; {REEXPORT}")
    graph_outputs = [o.name for o in model.graph.output]
    expected = [MERGED_NAME] if meta["merged"] else outputs
    if expected and graph_outputs != expected:
        raise CheckpointError(f"{bounded(path)}: its graph outputs {bounded(graph_outputs)} are not the "
                              f"{bounded(expected)} its uhd_* metadata names: {other_model}; {REEXPORT}")
    return model, meta


def read_preprocess(onnx_path: str | Path) -> dict[str, Any]:
    """The ``uhd_preprocess`` metadata: color, scale, layout, resize, img_size [H, W], letterbox."""
    return read_metadata(onnx_path)["preprocess"]


def compare_detections(ref: np.ndarray, got: np.ndarray, tie_eps: float = TIE_EPS) -> float:
    """Max abs difference of two (B, N, 6) detection tensors, robust to permutations among ties.

    Scores (column 0) are compared position by position, so the sort order is checked. Top-k may
    order rows with equal scores differently in PyTorch and ONNX Runtime: within each run of rows
    whose reference scores are tied (within ``tie_eps``), rows are matched one-to-one (Hungarian on
    the L-inf row distance) before comparing. The last tied run is compared on scores only: when
    ties straddle the top-k cut (e.g. the zero-score CenterNet cells), the two runtimes may keep
    different members. Shape mismatch -> inf.
    """
    from scipy.optimize import linear_sum_assignment

    if ref.shape != got.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    worst = float(np.abs(ref[..., 0] - got[..., 0]).max())
    for r, g in zip(ref, got):
        n = r.shape[0]
        start = 0
        while start < n:
            end = start + 1
            while end < n and abs(r[end, 0] - r[end - 1, 0]) <= tie_eps:
                end += 1
            if end == n and end - start > 1:
                break  # the last tied run: scores only (see docstring)
            cost = np.abs(r[start:end, None, :] - g[None, start:end, :]).max(-1)
            rows, cols = linear_sum_assignment(cost)
            worst = max(worst, float(cost[rows, cols].max()))
            start = end
    return worst


def verify_onnx(model: Detector, onnx_path: str | Path, inputs: Sequence[torch.Tensor],
                tol: float = 1e-4) -> dict[str, float]:
    """Run ONNX Runtime (CPUExecutionProvider) and the PyTorch ExportWrapper on every input.

    Returns {output name: max abs difference over all inputs}: inf on a shape mismatch, NaN when
    either side's output holds a NaN or inf (a model with non-finite weights would otherwise
    compare as "no difference", since NaN - NaN is NaN and ``max(0.0, nan)`` is 0.0). The caller
    decides pass/fail (``d <= tol`` is False for both). Merged ``detections`` are compared with
    :func:`compare_detections` (robust to top-k tie permutations); scores within min(1e-6, tol/100)
    count as tied. A graph that ONNX Runtime cannot run raises ExportError.
    """
    meta = read_metadata(onnx_path)
    wrapper = ExportWrapper(copy.deepcopy(model).cpu().float().eval(), merge_postprocess=meta["merged"],
                            topk=meta["topk"], output_names=None if meta["merged"] else meta["outputs"]).eval()
    session = _ort_session(Path(onnx_path))
    names = [o.name for o in session.get_outputs()]
    diffs = dict.fromkeys(names, 0.0)
    for images in inputs:
        with torch.no_grad():
            ref = wrapper(images.float().cpu())
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        try:
            got = session.run(None, {INPUT_NAME: images.float().cpu().numpy()})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = first_line(exc)
            raise ExportError(f"ONNX Runtime failed on input {list(images.shape)}: {first[:300]}") from exc
        for name, r, g in zip(names, refs, got):
            r_np = r.numpy()
            if not (np.isfinite(r_np).all() and np.isfinite(g).all()):
                d = float("nan")
            elif name == MERGED_NAME:
                d = compare_detections(r_np, g, tie_eps=min(TIE_EPS, tol / 100))
            elif r_np.shape != g.shape:
                d = float("inf")
            else:
                d = float(np.abs(r_np - g).max()) if r_np.size else 0.0
            diffs[name] = float("nan") if np.isnan(d) or np.isnan(diffs[name]) else max(diffs[name], d)
    return diffs


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` that hold a NaN or inf."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _fixed_input_shapes(model: onnx.ModelProto,
                        input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    props = {p.key: p.value for p in model.metadata_props}
    img_hw = json.loads(props["uhd_preprocess"])["img_size"] if "uhd_preprocess" in props else None
    defaults = {"batch": 1, "height": img_hw[0] if img_hw else None, "width": img_hw[1] if img_hw else None}
    init = {t.name for t in model.graph.initializer}
    fixed: dict[str, list[int]] = {}
    for name, dims in _graph_shapes([i for i in model.graph.input if i.name not in init]).items():
        if input_shapes and name in input_shapes:
            fixed[name] = [int(d) for d in input_shapes[name]]
            continue
        concrete = [d if isinstance(d, int) else defaults.get(d) for d in dims]
        if any(d is None for d in concrete):
            raise ExportError(f"input {name} has dynamic dims {dims}: pass input_shapes")
        fixed[name] = [int(d) for d in concrete]  # type: ignore[arg-type]
    return fixed


def count_macs(onnx_path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """Multiply-accumulates of one forward pass, summed over Conv, ConvTranspose, Gemm and MatMul.

    Conv: output elements x (C_in/groups x kernel area); ConvTranspose: input elements x
    (C_out/groups x kernel area); Gemm/MatMul: output elements x the reduced dim (attention's
    Q·K^T and A·V matmuls included). Bias adds, normalization, activations, pooling, softmax and
    other elementwise ops are excluded. Shapes come from onnx.shape_inference at the export size
    (dynamic dims: batch 1 and the ``uhd_preprocess`` img_size, or ``input_shapes``); tensors it
    cannot resolve are measured by one ONNX Runtime run on zeros. FLOPs ~= 2 x MACs.
    """
    model = onnx.load(str(onnx_path))
    fixed = _fixed_input_shapes(model, input_shapes)
    for inp in model.graph.input:
        if inp.name in fixed:
            for d, v in zip(inp.type.tensor_type.shape.dim, fixed[inp.name]):
                d.Clear()
                d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = inferred.graph
    shapes: dict[str, list[int] | None] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = _graph_shapes([vi])[vi.name]
        shapes[vi.name] = [int(d) for d in dims] if dims and all(isinstance(d, int) and d > 0 for d in dims) else None
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    nodes = [n for n in g.node if n.op_type in _MAC_OPS]
    needed = {name for n in nodes for name in (n.input[0], n.input[1], n.output[0])}
    missing = sorted(name for name in needed if shapes.get(name) is None)
    if missing:  # measure the rest with one ORT run that exposes them as outputs
        probe = copy.deepcopy(model)
        known = {o.name for o in probe.graph.output}
        for name in missing:
            if name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
        feeds = {name: np.zeros(dims, np.float32) for name, dims in fixed.items()}
        outs = _ort_session(probe).run(missing, feeds)
        shapes.update({name: list(o.shape) for name, o in zip(missing, outs)})
    total = 0
    for n in nodes:
        a, b, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        if a is None or b is None or y is None:
            raise ExportError(f"no shapes for {n.op_type} node {n.name!r}")
        if n.op_type == "Conv":
            total += int(np.prod(y)) * int(np.prod(b[1:]))
        elif n.op_type == "ConvTranspose":
            total += int(np.prod(a)) * int(np.prod(b[1:]))
        elif n.op_type == "Gemm":
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            total += int(np.prod(y)) * (a[0] if trans_a else a[1])
        else:  # MatMul
            total += int(np.prod(y)) * a[-1]
    return total
