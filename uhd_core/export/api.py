"""`uhd export` as one call: checkpoint -> verified ONNX file, or a clear error.

The architecture, head, classes, anchors, input size, ... come from the config stored in the
checkpoint; arguments only override. Verification compares ONNX Runtime with PyTorch on random
inputs at the export size (and at a second size/batch for dynamic exports) and on real training
images when the checkpoint's --image-dir is on this machine.

The file is written under a hidden temp name next to the output (``outputs.temp_path_for``) and
renamed to the requested name only once verified, so a kill at any moment leaves no unverified
file under that name. A file whose outputs differ by more than ``tol``, or are not finite (NaN/inf)
on either side, is kept with a ``.unverified`` suffix (``m.onnx.unverified``: no tool loads it as
ONNX by accident) and an existing file under the requested name is left as it was.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from uhd_core.checkpoint import load_checkpoint
from uhd_core.config import check_img_size_fits_stride
from uhd_core.config_checks import size_multiple
from uhd_core.errors import CheckpointError, ConfigError, first_line
from uhd_core.export.onnx_export import ExportReport, export_onnx, non_finite_tensors, ort_source, verify_onnx
from uhd_core.models.loading import build_with_weights, checkpoint_config, checkpoint_weights, weights_do_not_fit
from uhd_core.outputs import check_output_file, move_output, opencv_path, temp_path_for

VERIFY_TOL = 1e-4


@dataclass
class ExportResult:
    report: ExportReport
    path: Path  # where the file is now (``.unverified`` suffix when verification failed)
    max_abs_diff: dict[str, float]
    verified: bool
    used_ema: bool
    latency_ms: float | None  # ONNX Runtime, 1 thread, batch 1 at the export size (median)
    opencv_dnn: str = ""  # "max diff X vs ONNX Runtime", or why OpenCV's dnn module cannot run it
    problem: str = ""  # why verification failed (one line), "" when verified


def unverified_path(out: Path) -> Path:
    """Where a file that failed verification is kept: ``m.onnx`` -> ``m.onnx.unverified``."""
    return out.with_name(out.name + ".unverified")


def ort_latency_ms(onnx_path: Path, shape: tuple[int, ...], runs: int = 50, threads: int = 1) -> float:
    """Median ms of ``runs`` ONNX Runtime calls on a random input of ``shape`` (after 5 warm-up calls)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(ort_source(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(5):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def _real_images(cfg, size: tuple[int, int], count: int) -> torch.Tensor | None:
    """``count`` training images (the checkpoint's --image-dir, resized as in training) as (count, 3, H, W)
    float 0..1, or None when that folder is not on this machine: random inputs alone then."""
    from uhd_core.augment.preview import load_preview_samples

    folder = Path(cfg.image_dir)
    if not folder.is_dir():
        return None
    try:
        samples = load_preview_samples(folder, size, count, seed=0, classes=cfg.classes,
                                       interpolation=cfg.resize_interpolation)
    except Exception:  # noqa: BLE001 - an unreadable data folder must not fail an export
        return None
    if len(samples) < count:
        return None
    images = np.stack([s[0] for s in samples[:count]]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0


def check_opencv_dnn(onnx_path: Path, image: np.ndarray) -> str:
    """Load the file with ``cv2.dnn.readNetFromONNX`` and compare its outputs with ONNX Runtime.

    image: (1, 3, H, W) float32. Returns a one-line verdict; never raises (embedded users deploy with
    OpenCV, so an unsupported op is reported, not fatal).
    """
    import cv2
    import onnxruntime as ort

    try:
        with opencv_path(onnx_path) as cv_path:  # a non-UTF-8 name would crash OpenCV
            net = cv2.dnn.readNetFromONNX(cv_path)
        net.setInput(image)
        names = net.getUnconnectedOutLayersNames()
        got = net.forward(list(names))
        session = ort.InferenceSession(ort_source(onnx_path), providers=["CPUExecutionProvider"])
        want = session.run(None, {session.get_inputs()[0].name: image})
        diff = max(float(np.abs(np.asarray(g).reshape(-1) - np.asarray(w).reshape(-1)).max())
                   for g, w in zip(sorted(got, key=np.size), sorted(want, key=np.size), strict=True))
        return f"runs; max |OpenCV - ONNX Runtime| {diff:.2e} (OpenCV {cv2.__version__})"
    except Exception as exc:  # noqa: BLE001 - report any failure of the optional runtime
        first = first_line(exc)
        return f"cannot run it (OpenCV {cv2.__version__}): {first[:160]}"


def export_checkpoint(checkpoint: str | Path, output: str | Path | None = None, *,
                      img_size: tuple[int, int] | None = None, opset: int = 17, merge_postprocess: bool = False,
                      dynamic: bool = False, topk: int = 100, use_ema: bool | None = None,
                      arch: str | None = None, batch_size: int = 1, overwrite: bool = False,
                      latency: bool = True) -> ExportResult:
    """Export a UHD checkpoint's student model to ONNX and verify it against PyTorch.

    ``use_ema`` None = the EMA weights when the checkpoint has them. ``output`` None = the checkpoint's
    path with ``.onnx``. An existing output is refused unless ``overwrite``; an output that is the
    checkpoint itself is refused always (``uhd_core.outputs.check_output_file``), before any work.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():  # load_checkpoint would call it missing
        raise CheckpointError(f"{checkpoint} is a folder; give a checkpoint file (runs/<exp>/best_....pt)")
    out = Path(output) if output else checkpoint.with_suffix(".onnx")
    if out.is_dir():
        raise ConfigError(f"--output {out} is a folder; give the ONNX file's path")
    ckpt = load_checkpoint(checkpoint)  # a bad checkpoint is the first thing to say (cheap: no export yet)
    check_output_file(out, flag="--output", overwrite=overwrite, inputs=[checkpoint])
    # A failed verification replaces an older .unverified file of the same export, never the input.
    check_output_file(unverified_path(out), flag="--output", overwrite=True, inputs=[checkpoint])
    cfg = checkpoint_config(ckpt, {"arch": arch} if arch else {})
    size = tuple(img_size) if img_size else tuple(cfg.img_size)
    if img_size:  # the training size itself is exported as trained, whatever it is
        check_img_size_fits_stride(cfg, size)
    state, used_ema = checkpoint_weights(ckpt, checkpoint, use_ema)
    model = build_with_weights(cfg, state, weights_do_not_fit(str(checkpoint), f" with --arch {arch}" if arch else ""))

    tmp = temp_path_for(out)
    try:
        report = export_onnx(model, cfg, tmp, img_size=size, opset=opset, merge_postprocess=merge_postprocess,
                             dynamic=dynamic, topk=topk, batch_size=batch_size)
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.rand(batch_size, 3, *size, generator=gen)]
        if dynamic:  # a second, larger size: by 16 px steps, or the model's grid stride if coarser
            stride = size_multiple(cfg, 16)
            inputs.append(torch.rand(batch_size + 2, 3, size[0] + stride * 2, size[1] + stride, generator=gen))
        real = _real_images(cfg, size, batch_size)
        if real is not None:
            inputs.append(real)
        diffs = verify_onnx(model, tmp, inputs, tol=VERIFY_TOL)
        verified = all(d <= VERIFY_TOL for d in diffs.values())  # False for NaN and inf
        path = out if verified else unverified_path(out)
        problem = "" if verified else _why_unverified(diffs, model, checkpoint, path)
        move_output(tmp, path, "--output")
    finally:
        tmp.unlink(missing_ok=True)
    report = dataclasses.replace(report, path=path)
    ms = ort_latency_ms(path, (1, 3, *size)) if latency and verified and (dynamic or batch_size == 1) else None
    opencv = check_opencv_dnn(path, inputs[0].numpy()) if verified else ""
    return ExportResult(report, path, diffs, verified, used_ema, ms, opencv, problem)


def _why_unverified(diffs: dict[str, float], model: torch.nn.Module, checkpoint: Path, kept: Path) -> str:
    """One line: which outputs failed and why, and where the file is kept."""
    non_finite = [name for name, d in diffs.items() if math.isnan(d)]
    if not non_finite:
        return f"outputs differ from PyTorch by more than {VERIFY_TOL:g}; kept as {kept}"
    bad = non_finite_tensors(model)
    cause = (f": {len(bad)} weight tensors of {checkpoint} hold NaN/inf (e.g. {bad[0]}), so this checkpoint "
             "cannot be deployed; export an earlier checkpoint of the run" if bad
             else " in PyTorch or ONNX Runtime although the weights are finite (an overflow?)")
    return f"outputs {', '.join(non_finite)} are not finite (NaN/inf){cause}; kept as {kept}"
