"""The ``uhd_*`` metadata of a UHD ONNX export: reading it, and loading an export for eval/predict/bench.

Keys (all strings in the ONNX ``metadata_props``): ``uhd_preprocess`` (JSON object: color, scale,
layout, resize, img_size [H, W], letterbox), ``uhd_config`` (JSON RunConfig), ``uhd_outputs``
(JSON list of output names), ``uhd_merged`` / ``uhd_dynamic`` ("1" or "0"), ``uhd_topk`` (int).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from uhd_core.errors import CheckpointError, bounded, first_line
from uhd_core.export.onnx_common import INPUT_NAME, MERGED_NAME, ExportError, graph_inputs

REEXPORT = "re-export it with `uhd export CHECKPOINT`"


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


def read_preprocess(onnx_path: str | Path) -> dict[str, Any]:
    """The ``uhd_preprocess`` metadata: color, scale, layout, resize, img_size [H, W], letterbox."""
    return read_metadata(onnx_path)["preprocess"]


def load_export(onnx_path: str | Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Read a UHD export for ``eval``/``predict``/``bench``: (the model, its decoded ``uhd_*`` metadata).

    Every way the file can be unusable is one ``CheckpointError`` line naming the file and what to
    do, instead of an ONNX Runtime/protobuf text: an empty file, a file that is not ONNX, an ONNX
    without UHD metadata, metadata that does not parse (edited after export), and metadata that
    does not describe this graph (an input size or output names other than the graph's: copied
    from another model). Whether the graph's output *shapes* fit ``uhd_config`` needs the model
    built from it: ``uhd_core.inference.OnnxPredictor`` checks that with one probe run.
    """
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
    meta = _decode_metadata(path, {p.key: p.value for p in model.metadata_props})
    _check_graph_matches(path, model, meta)
    return model, meta


def _decode_metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """The decoded ``uhd_*`` metadata of ``path`` (as :func:`read_metadata`), or one CheckpointError."""
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
    return {"preprocess": pre, "config": config, "outputs": outputs, "merged": props.get("uhd_merged", "0") == "1",
            "topk": topk, "dynamic": props.get("uhd_dynamic", "0") == "1"}


def _check_graph_matches(path: Path, model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """One CheckpointError when the graph's input or output names/sizes are not what ``meta`` says."""
    hw = meta["preprocess"]["img_size"]
    inputs = graph_inputs(model)
    other_model = "its metadata was edited or copied from another model"
    if len(inputs) != 1 or INPUT_NAME not in inputs or len(inputs[INPUT_NAME]) != 4:
        raise CheckpointError(f"{bounded(path)}: its graph does not take one (B, 3, H, W) input {INPUT_NAME!r} "
                              f"(inputs {bounded(inputs)}) although it has UHD metadata: {other_model}; {REEXPORT}")
    dims = inputs[INPUT_NAME]
    fixed_hw = [d for d in dims[2:] if isinstance(d, int)]
    if (isinstance(dims[1], int) and dims[1] != 3) or (len(fixed_hw) == 2 and fixed_hw != hw):
        raise CheckpointError(f"{bounded(path)}: its uhd_preprocess metadata says img_size {hw[0]}x{hw[1]} but the "
                              f"graph takes {dims}: {other_model}; {REEXPORT}")
    graph_outputs = [o.name for o in model.graph.output]
    expected = [MERGED_NAME] if meta["merged"] else meta["outputs"]
    if expected and graph_outputs != expected:
        raise CheckpointError(f"{bounded(path)}: its graph outputs {bounded(graph_outputs)} are not the "
                              f"{bounded(expected)} its uhd_* metadata names: {other_model}; {REEXPORT}")
