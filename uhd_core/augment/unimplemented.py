"""Ops the original tool has that are not built yet (none at the moment).

Names listed in ``UNIMPLEMENTED_OPS`` are registered as placeholders so that the original tool's
configs (which list them, often with ``prob: 0``) still load: any keys are accepted, and only
building one with ``prob > 0`` fails with ``NotImplementedError``. Mosaic, MixUp and CopyPaste
used to be here; they are implemented in ``multi_sample.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uhd_core.augment.registry import AugOp, register_augment_op

UNIMPLEMENTED_OPS: tuple[str, ...] = ()


def _not_implemented(name: str) -> Callable[..., AugOp]:
    def build(**params: Any) -> AugOp:
        raise NotImplementedError(f"augment op {name!r} is not implemented yet")

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{name}: not implemented yet (loads with prob 0, raises with prob > 0)."
    return build


for _name in UNIMPLEMENTED_OPS:
    register_augment_op(_name)(_not_implemented(_name))
