"""Registry of augment ops and the contract every op follows.

An op *builder* is a function taking the op's YAML keys as keyword-only arguments and returning an
``AugOp``; the builder's signature is the single source of truth for which keys an op accepts (the
loader warns about any other key). ``register_augment_op(name)`` adds a builder to ``AUGMENT_OPS``.

Inside the pipeline an ``AugOp`` is called as ``op(image, boxes, labels, rng)``:

* ``image``: ``(H, W, 3)`` uint8 RGB; the op returns a new ``(H, W, 3)`` uint8 array (same H, W)
  or the input unchanged; it must not modify its input in place.
* ``boxes``: ``(N, 4)`` float32 **xyxy**, normalized 0..1 (the pipeline converts from/to cxcywh
  once, because flips, scaling and translation are all simple affine maps on xyxy, and clipping is
  a plain ``clip`` there). Geometric ops clip their output to 0..1.
* ``labels``: ``(N,)`` int64, row-aligned with ``boxes``.
* ``rng``: the caller's ``np.random.Generator``; the only source of randomness an op may use.

The op is applied with probability ``prob`` by the pipeline, so the op itself always acts.

Ops that combine several samples (Mosaic, MixUp, CopyPaste) set ``needs_source = True`` and are
called as ``op(image, boxes, labels, rng, source)``: ``source(rng)`` returns another random sample of
the same dataset, un-augmented, at the same size, boxes already xyxy (``SampleSource``). Training
passes the dataset's cache; aug-preview and tests pass their own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class AugOp(Protocol):
    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


AugOpBuilder = Callable[..., AugOp]

#: ``source(rng) -> (image (H, W, 3) uint8, boxes (N, 4) float32 xyxy normalized, labels (N,) int64)``
SampleSource = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]

#: name -> builder, in registration order.
AUGMENT_OPS: dict[str, AugOpBuilder] = {}


@dataclass(frozen=True)
class AugOpInfo:
    """How the YAML loader reads one op's entry.

    ``keys``: accepted keys besides ``prob`` (``None`` = any key, for ops whose builder takes
    ``**kwargs``). ``bare_value``: the key a bare number stands for (``None`` = it is ``prob``).
    ``default_prob``: probability when the entry gives none.
    """

    keys: frozenset[str] | None
    bare_value: str | None = None
    default_prob: float = 0.0


AUGMENT_OP_INFO: dict[str, AugOpInfo] = {}


def _builder_keys(builder: AugOpBuilder) -> frozenset[str] | None:
    keys: set[str] = set()
    for param in inspect.signature(builder).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            keys.add(param.name)
        else:
            raise TypeError(f"augment op builder {builder!r}: parameters must be keyword-only, got {param.name!r}")
    return frozenset(keys)


def register_augment_op(
    name: str, *, bare_value: str | None = None, default_prob: float = 0.0
) -> Callable[[AugOpBuilder], AugOpBuilder]:
    """Decorator: register ``builder`` under ``name`` (the key used in the YAML ``data_augment`` list)."""

    def decorator(builder: AugOpBuilder) -> AugOpBuilder:
        if name in AUGMENT_OPS:
            raise ValueError(f"augment op {name!r} is registered twice")
        keys = _builder_keys(builder)
        if bare_value is not None and keys is not None and bare_value not in keys:
            raise TypeError(f"augment op {name!r}: bare_value {bare_value!r} is not a builder parameter")
        AUGMENT_OPS[name] = builder
        AUGMENT_OP_INFO[name] = AugOpInfo(keys=keys, bare_value=bare_value, default_prob=default_prob)
        return builder

    return decorator
