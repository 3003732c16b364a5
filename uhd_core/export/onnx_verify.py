"""Parity of an ONNX export with PyTorch: ONNX Runtime vs the traced wrapper, and weight sanity."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from uhd_core.errors import first_line
from uhd_core.export.onnx_common import INPUT_NAME, MERGED_NAME, ExportError, ExportWrapper, ort_session
from uhd_core.export.onnx_meta import read_metadata
from uhd_core.models.detector import Detector

#: Rows whose scores differ by at most this much count as tied in :func:`compare_detections`.
TIE_EPS = 1e-6


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
    session = ort_session(Path(onnx_path))
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
