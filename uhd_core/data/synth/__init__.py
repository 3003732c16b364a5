"""Procedurally drawn SYNTHETIC demo dataset of human figures, in YOLO format.

Everything here is made up: figures are built from cv2 drawing primitives (a head, a torso,
two two-segment arms and two two-segment legs in a few poses) over gradient, noise and flat
backgrounds with non-person distractor shapes. It exists so the toolkit can be tried end to end
(train, eval, export) in minutes without downloading anything. Numbers measured on it say
nothing about real detection quality: real numbers come from real data.

Layout written by :func:`write_synthetic_dataset`, directly into ``out_dir``::

    synth_000000.jpg   RGB image (saved as JPEG, quality 90), width and height each 96..256 px
    synth_000000.txt   one line per person: ``0 cx cy w h``
                       class 0 = person; cxcywh normalized 0..1 by image width/height, 6 decimals;
                       the tight box of the figure's pixels that lie inside the image
                       (an empty file when the image holds no figure)

Every image is generated from its own RNG derived from ``(seed, index)``, so image ``i`` is the
same whatever ``n`` is, and the same seed gives byte-identical files (on the same OpenCV build:
the JPEG encoder is part of the output).

Modules: ``paint`` (fixed-point drawing primitives and colours), ``person`` (one figure: pose,
skeleton, drawing), ``scene`` (background, distractors, placing figures: one image), ``writer``
(the files on disk).
"""

from uhd_core.data.synth.person import draw_person
from uhd_core.data.synth.writer import SynthReport, write_synthetic_dataset

__all__ = ["SynthReport", "draw_person", "write_synthetic_dataset"]
