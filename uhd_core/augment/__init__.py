"""Training-time augmentation: registered ops applied in YAML order on the resized uint8 image.

    pipeline = build_augment_pipeline("my_aug.yaml")   # None / "uhd/aug.yaml" = built-in default
    image, boxes, labels = pipeline(image, boxes, labels, rng)
    # image (H, W, 3) uint8 RGB; boxes (N, 4) float32 cxcywh normalized 0..1; labels (N,) int64

Randomness comes only from the ``np.random.Generator`` passed per call.
"""

from uhd_core.augment.errors import AugmentConfigError, AugmentConfigNotFoundError, UnknownAugmentOpError
from uhd_core.augment.pipeline import AugmentPipeline, build_augment_pipeline
from uhd_core.augment.registry import AUGMENT_OP_INFO, AUGMENT_OPS, AugOp, register_augment_op
from uhd_core.augment.spec import (
    ORIGINAL_DEFAULT_PATH,
    AugOpSpec,
    default_config_text,
    load_augment_specs,
    parse_augment_specs,
)
from uhd_core.augment.unimplemented import UNIMPLEMENTED_OPS

# Registers the crop, photometric-distort, noise and weather ops (after spec.py registered the rest).
from uhd_core.augment import crops_noise_weather  # noqa: F401
from uhd_core.augment import multi_sample  # noqa: F401  -- Mosaic, MixUp, CopyPaste (need source=)

__all__ = [
    "AUGMENT_OPS",
    "AUGMENT_OP_INFO",
    "ORIGINAL_DEFAULT_PATH",
    "UNIMPLEMENTED_OPS",
    "AugOp",
    "AugOpSpec",
    "AugmentConfigError",
    "AugmentConfigNotFoundError",
    "AugmentPipeline",
    "UnknownAugmentOpError",
    "build_augment_pipeline",
    "default_config_text",
    "load_augment_specs",
    "parse_augment_specs",
    "register_augment_op",
]
