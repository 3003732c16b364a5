"""Pixel-only ops (boxes and labels pass through unchanged).

Two implementations, chosen per op:

* **albumentations transforms, seeded per call** (Blur, MedianBlur, MotionBlur, GaussianBlur,
  GaussNoise, ImageCompression, CLAHE, ToGray). ``BasicTransform.set_random_state(generator,
  py_random)`` (albumentations 2.x) swaps in the random sources a transform samples from: we hand it
  the caller's ``np.random.Generator`` directly and a private ``random.Random`` reseeded from that
  generator, so the result depends only on the caller's rng. Measured on 64x64: the reseed +
  ``set_random_state`` adds ~6 us and the albumentations call overhead ~6-10 us on top of the
  OpenCV work, well under the 200 us/op limit; constructing transforms or ``set_random_seed`` per
  call would cost more (a fresh ``default_rng`` each time) and buys nothing.
* **our own rng + albumentations' functional API / cv2** where no albumentations transform has the
  original tool's semantics or a transform would be wasteful: RandomHSV (YOLO multiplicative gains
  through a LUT; albumentations' HueSaturationValue adds shifts), RandomBrightness /
  RandomContrast / RandomSaturation (one factor each; ``ColorJitter`` would run all four
  adjustments in a shuffled order for each call).

albumentations is imported lazily (it takes ~1.5 s) so listing or loading configs stays fast.
"""

from __future__ import annotations

import math
import os
import random
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from uhd_core.augment._params import as_float, as_int_pair, as_pair, odd_kernel_range
from uhd_core.augment.registry import AugOp, register_augment_op

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]


def _albumentations() -> ModuleType:
    # albumentations 2.x phones PyPI on import (2 s timeout) unless this is set; training machines
    # are often offline and data-loader workers would each pay it. setdefault: a user's explicit
    # choice wins.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


class _AlbumentationsOp:
    """Runs one albumentations ``ImageOnlyTransform`` (built with ``p=1``; the pipeline owns ``prob``)."""

    def __init__(self, transform: Any) -> None:
        self._transform = transform
        self._py_random = random.Random(0)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Sample:
        # Transforms draw python-level choices (kernel size, quality, ...) from py_random and arrays
        # (noise) from the numpy generator; both now derive from the caller's rng only.
        self._py_random.seed(int(rng.integers(0, 2**63 - 1)))
        self._transform.set_random_state(rng, self._py_random)
        out = self._transform(image=image)["image"]
        return out, boxes, labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._transform!r})"


@register_augment_op("Blur")
def build_blur(*, blur_limit: Any = (3, 7)) -> AugOp:
    """Box blur, odd kernel size drawn from ``blur_limit`` (``[lo, hi]`` or a fixed ``k``)."""
    a = _albumentations()
    return _AlbumentationsOp(a.Blur(blur_limit=odd_kernel_range(blur_limit, "Blur.blur_limit", lo=3), p=1.0))


@register_augment_op("MedianBlur")
def build_median_blur(*, blur_limit: Any = (3, 7)) -> AugOp:
    """Median blur, odd kernel size from ``blur_limit``. Note: k >= 7 costs ~200 us on 64x64 RGB."""
    a = _albumentations()
    return _AlbumentationsOp(
        a.MedianBlur(blur_limit=odd_kernel_range(blur_limit, "MedianBlur.blur_limit", lo=3), p=1.0)
    )


@register_augment_op("MotionBlur")
def build_motion_blur(*, blur_limit: Any = (3, 7)) -> AugOp:
    """Linear motion blur, odd kernel size from ``blur_limit``, any angle."""
    a = _albumentations()
    # allow_shifted=False: a shifted kernel translates the whole image by up to k/2 px, which would
    # silently misalign every box.
    return _AlbumentationsOp(
        a.MotionBlur(
            blur_limit=odd_kernel_range(blur_limit, "MotionBlur.blur_limit", lo=3), allow_shifted=False, p=1.0
        )
    )


@register_augment_op("GaussianBlur")
def build_gaussian_blur(*, blur_limit: Any = (3, 7), sigma_limit: Any = (0.1, 2.0)) -> AugOp:
    """Gaussian blur: odd kernel from ``blur_limit`` (0 = derived from sigma), sigma ~ U(``sigma_limit``)."""
    a = _albumentations()
    return _AlbumentationsOp(
        a.GaussianBlur(
            blur_limit=odd_kernel_range(blur_limit, "GaussianBlur.blur_limit", lo=0),
            sigma_limit=as_pair(sigma_limit, "GaussianBlur.sigma_limit", lo=0.0, hi=100.0),
            p=1.0,
        )
    )


@register_augment_op("GaussNoise")
def build_gauss_noise(*, mean: Any = 0.0, var_limit: Any = (10.0, 50.0)) -> AugOp:
    """Additive per-pixel Gaussian noise; ``mean`` in pixel units, ``var_limit`` in pixel variance.

    albumentations 2.x takes std as a fraction of 255, so the variance bounds become
    ``sqrt(var) / 255``; the std is drawn uniformly between them.
    """
    a = _albumentations()
    m = as_float(mean, "GaussNoise.mean", lo=-255.0, hi=255.0) / 255.0
    v_lo, v_hi = as_pair(var_limit, "GaussNoise.var_limit", lo=0.0, hi=255.0**2)
    return _AlbumentationsOp(
        a.GaussNoise(std_range=(math.sqrt(v_lo) / 255.0, math.sqrt(v_hi) / 255.0), mean_range=(m, m), p=1.0)
    )


@register_augment_op("ImageCompression")
def build_image_compression(*, quality_range: Any = (40, 90)) -> AugOp:
    """JPEG re-encode with quality drawn from ``quality_range`` (1..100)."""
    a = _albumentations()
    q = as_int_pair(quality_range, "ImageCompression.quality_range", lo=1, hi=100)
    return _AlbumentationsOp(a.ImageCompression(quality_range=q, compression_type="jpeg", p=1.0))


@register_augment_op("CLAHE")
def build_clahe(*, clip_limit: Any = 2.0, tile_grid_size: Any = (8, 8)) -> AugOp:
    """CLAHE on the L channel of LAB. A bare ``clip_limit`` is used as is (the original tool's
    meaning; albumentations would read a bare value as the range ``[1, v]``); ``[lo, hi]`` is drawn."""
    a = _albumentations()
    return _AlbumentationsOp(
        a.CLAHE(
            clip_limit=as_pair(clip_limit, "CLAHE.clip_limit", lo=1.0, hi=100.0),
            tile_grid_size=as_int_pair(tile_grid_size, "CLAHE.tile_grid_size", lo=1, hi=64),
            p=1.0,
        )
    )


@register_augment_op("ToGray")
def build_to_gray() -> AugOp:
    """Luma grey, kept as 3 identical channels."""
    a = _albumentations()
    return _AlbumentationsOp(a.ToGray(num_output_channels=3, method="weighted_average", p=1.0))


# --- ops sampled from our rng --------------------------------------------------------------------

_LUT_X = np.arange(256, dtype=np.float32)


class _RandomHSV:
    def __init__(self, gains: tuple[float, float, float]) -> None:
        self._gains = np.array(gains, dtype=np.float64)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Sample:
        r = rng.uniform(-1.0, 1.0, 3) * self._gains + 1.0
        # YOLOv5-style: multiply H, S, V by random gains through 256-entry LUTs (much cheaper than
        # float HSV arithmetic per pixel). OpenCV's 8-bit hue is 0..179, hence the modulo.
        hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
        lut_h = ((_LUT_X * r[0]) % 180).astype(np.uint8)
        lut_s = np.clip(_LUT_X * r[1], 0, 255).astype(np.uint8)
        lut_v = np.clip(_LUT_X * r[2], 0, 255).astype(np.uint8)
        hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), boxes, labels


@register_augment_op("RandomHSV")
def build_random_hsv(*, hue_gain: Any = 0.015, saturation_gain: Any = 0.7, value_gain: Any = 0.4) -> AugOp:
    """Multiply hue, saturation and value by ``1 + U(-gain, gain)`` each (YOLO ``hsv_h/s/v``)."""
    return _RandomHSV(
        (
            as_float(hue_gain, "RandomHSV.hue_gain", lo=0.0, hi=1.0),
            as_float(saturation_gain, "RandomHSV.saturation_gain", lo=0.0, hi=1.0),
            as_float(value_gain, "RandomHSV.value_gain", lo=0.0, hi=1.0),
        )
    )


class _FactorOp:
    """``image -> fn(image, factor)`` with ``factor ~ U(lo, hi)`` drawn from the caller's rng."""

    def __init__(self, fn_name: str, lo: float, hi: float) -> None:
        self._fn_name = fn_name
        self._lo, self._hi = lo, hi
        self._fn: Any = None

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Sample:
        factor = float(rng.uniform(self._lo, self._hi))
        if self._fn is None:  # resolved lazily so the op pickles as plain data for spawn workers
            _albumentations()
            from albumentations.augmentations.pixel import functional as fpixel

            self._fn = getattr(fpixel, self._fn_name)
        return self._fn(image, factor), boxes, labels

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fn": None}


def _factor_range(value: Any, where: str) -> tuple[float, float]:
    return as_pair(value, where, lo=0.0, hi=10.0)


@register_augment_op("RandomBrightness")
def build_random_brightness(*, factor_range: Any = (0.8, 1.2)) -> AugOp:
    """Multiply all pixels by ``f ~ U(factor_range)`` (clipped to 0..255)."""
    return _FactorOp("adjust_brightness_torchvision", *_factor_range(factor_range, "RandomBrightness.factor_range"))


@register_augment_op("RandomContrast")
def build_random_contrast(*, factor_range: Any = (0.8, 1.2)) -> AugOp:
    """Scale pixel distances from the mean grey level by ``f ~ U(factor_range)``."""
    return _FactorOp("adjust_contrast_torchvision", *_factor_range(factor_range, "RandomContrast.factor_range"))


@register_augment_op("RandomSaturation")
def build_random_saturation(*, factor_range: Any = (0.8, 1.2)) -> AugOp:
    """Blend with the grey image: ``f ~ U(factor_range)``, 0 = grey, 1 = unchanged."""
    return _FactorOp("adjust_saturation_torchvision", *_factor_range(factor_range, "RandomSaturation.factor_range"))
