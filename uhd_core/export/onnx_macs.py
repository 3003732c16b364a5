"""Multiply-accumulate count of an ONNX graph (the cost figure of ``uhd export`` and ``uhd bench``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from uhd_core.export.onnx_common import ExportError, graph_inputs, graph_shapes, ort_session

_MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _fixed_input_shapes(model: onnx.ModelProto,
                        input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    """{input name: concrete dims}: ``input_shapes`` where given, else batch 1 and the export img_size."""
    props = {p.key: p.value for p in model.metadata_props}
    img_hw = json.loads(props["uhd_preprocess"])["img_size"] if "uhd_preprocess" in props else None
    defaults = {"batch": 1, "height": img_hw[0] if img_hw else None, "width": img_hw[1] if img_hw else None}
    fixed: dict[str, list[int]] = {}
    for name, dims in graph_inputs(model).items():
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
        dims = graph_shapes([vi])[vi.name]
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
        outs = ort_session(probe).run(missing, feeds)
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
