"""The training-time augmentation pipeline: ops applied in YAML order, each with its probability."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uhd_core.augment.errors import AugmentConfigError
from uhd_core.augment.registry import AUGMENT_OPS, AugOp
from uhd_core.augment.spec import AugOpSpec, check_op_name, filter_op_params, load_augment_specs

# A box must keep at least one pixel of width and height; the slack absorbs float32 rounding of
# boxes that are exactly one pixel wide.
_MIN_BOX_PIXELS = 1.0 - 1e-4

_CXCYWH_TO_XYXY = np.array(
    [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [-0.5, 0.0, 0.5, 0.0], [0.0, -0.5, 0.0, 0.5]], dtype=np.float32
)
_XYXY_TO_CXCYWH = np.array(
    [[0.5, 0.0, -1.0, 0.0], [0.0, 0.5, 0.0, -1.0], [0.5, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 1.0]], dtype=np.float32
)


@dataclass(frozen=True)
class OpTrace:
    """One op that fired on one sample: its time and the box count before/after it."""

    name: str
    seconds: float
    boxes_in: int
    boxes_out: int


class AugmentPipeline:
    """Applies ``specs`` in order; op ``i`` fires when ``rng.random() < specs[i].prob``.

    Ops with ``prob == 0`` are not built at all (so a config may list ops that are not implemented
    yet, as long as they are disabled). Building an op validates its parameters and raises
    ``ValueError`` on bad values, ``NotImplementedError`` for an unimplemented op with ``prob > 0``.

    Not thread-safe (albumentations transforms keep per-call state); data-loader *processes* are
    fine, and the pipeline pickles for spawn-started workers.
    """

    def __init__(self, specs: Sequence[AugOpSpec]) -> None:
        self.specs: tuple[AugOpSpec, ...] = tuple(specs)
        ops: list[tuple[float, str, AugOp]] = []
        for spec in self.specs:
            name = check_op_name(spec.name, "augment pipeline")
            if not 0.0 <= spec.prob <= 1.0:
                raise AugmentConfigError(f"{name}.prob: expected a number in [0, 1], got {spec.prob!r}")
            if spec.prob == 0.0:
                continue
            params = filter_op_params(name, spec.params, "augment pipeline")
            ops.append((float(spec.prob), name, AUGMENT_OPS[name](**params)))
        self._ops = tuple(ops)

    @property
    def active_ops(self) -> tuple[str, ...]:
        """Names of the ops that can fire (``prob > 0``), in order."""
        return tuple(name for _, name, _ in self._ops)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}(p={prob:g})" for prob, name, _ in self._ops)
        return f"AugmentPipeline([{inner}])"

    @property
    def needs_source(self) -> bool:
        """True when an active op draws partner samples (call with ``source=``)."""
        return any(getattr(op, "needs_source", False) for _, _, op in self._ops)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
        source: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
        trace: list[OpTrace] | None = None, force: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment one sample.

        Args:
            image: ``(H, W, 3)`` uint8 RGB, already at the training size.
            boxes: ``(N, 4)`` float32 cxcywh, normalized 0..1 (N may be 0).
            labels: ``(N,)`` int64 class ids.
            rng: the only source of randomness; the same seed gives the same output.
            source: ``source(rng) -> (image, boxes cxcywh, labels)``, another random un-augmented
                sample of the same size; needed by Mosaic, MixUp and CopyPaste (else ValueError).
            trace: when given, one OpTrace per op that fired is appended (aug-preview's statistics).
            force: run only this op, as if its prob were 1 (aug-preview --per-op); others are skipped.

        Returns:
            ``(image, boxes, labels)``: a new ``(H, W, 3)`` uint8 RGB array (never the input
            object), ``(M, 4)`` float32 cxcywh clipped to the image, ``(M,)`` int64; boxes narrower
            or lower than one pixel are dropped together with their labels (also for input boxes).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.array(labels, dtype=np.int64).reshape(-1)  # a copy: the output never aliases input
        if len(boxes) != len(labels):
            raise ValueError(f"boxes and labels differ in length: {len(boxes)} vs {len(labels)}")
        h, w = image.shape[:2]

        # cxcywh -> xyxy once (a matmul: numpy call overhead, not arithmetic, is the cost here);
        # every op works on xyxy (see registry docstring).
        xyxy = boxes @ _CXCYWH_TO_XYXY
        out = image
        for prob, name, op in self._ops:
            fires = (name == force) if force is not None else (prob >= 1.0 or rng.random() < prob)
            if not fires:
                continue
            t0 = time.perf_counter() if trace is not None else 0.0
            boxes_before = len(xyxy)
            if getattr(op, "needs_source", False):
                if source is None:
                    raise ValueError(f"augment op {name} combines samples and needs the dataset (source=)")
                out, xyxy, labels = op(out, xyxy, labels, rng, _xyxy_source(source))
            else:
                out, xyxy, labels = op(out, xyxy, labels, rng)
            if trace is not None:
                trace.append(OpTrace(name, time.perf_counter() - t0, boxes_before, len(xyxy)))

        if len(xyxy):
            np.minimum(xyxy, 1.0, out=xyxy)
            np.maximum(xyxy, 0.0, out=xyxy)
            result = xyxy @ _XYXY_TO_CXCYWH
            keep = np.minimum(result[:, 2] * w, result[:, 3] * h) >= _MIN_BOX_PIXELS
            if not keep.all():
                result, labels = result[keep], labels[keep]
        else:
            result = np.zeros((0, 4), dtype=np.float32)
            labels = labels[:0]
        # Callers often cache the decoded images; never hand back (an alias of) the input.
        out = out.copy() if out is image else np.ascontiguousarray(out)
        return out, result.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)


def _xyxy_source(source: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Wrap a cxcywh sample source so ops see xyxy boxes (the op contract)."""

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, boxes, labels = source(rng)
        xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) @ _CXCYWH_TO_XYXY
        return image, xyxy, np.array(labels, dtype=np.int64).reshape(-1)

    return draw


def build_augment_pipeline(source: str | Path | None) -> AugmentPipeline:
    """``AugmentPipeline(load_augment_specs(source))``; ``None`` / ``"uhd/aug.yaml"`` = built-in default."""
    specs = load_augment_specs(source)
    try:
        return AugmentPipeline(specs)
    except AugmentConfigError as exc:
        # Parameter values are checked when ops are built; say which file they came from.
        where = "built-in default" if source is None else str(source)
        raise type(exc)(f"{where}: {exc}") from None


def load_augment_pipeline(source: str, flag: str = "--aug-config") -> AugmentPipeline:
    """build_augment_pipeline for user input: any problem becomes one ConfigError naming ``flag`` and
    the file (missing file, bad YAML, unknown op, bad value, unimplemented op)."""
    from uhd_core.errors import ConfigError

    try:
        return build_augment_pipeline(source)
    except FileNotFoundError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    except (ValueError, NotImplementedError) as exc:
        raise ConfigError(f"{flag} {source}: {exc}") from None
