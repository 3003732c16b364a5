"""Rules that relate several RunConfig fields, with the facts of each family read from the registry.

``check_implemented`` runs before anything is built (the trainer's first step); the per-family facts
(allowed heads, grid stride, which teacher distils into it) come from the FamilySpec and head class
that the family registered (uhd_core.registry), never from a table here. Re-exported by uhd_core.config.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from uhd_core.errors import ConfigError
from uhd_core.registry import families, family, head_class

if TYPE_CHECKING:
    from uhd_core.config import RunConfig

# Flags whose feature is not built yet: a non-default value is an error naming the flag, never a
# silent no-op. Entries leave this table as their feature lands.
PENDING_FEATURES: dict[str, str] = {}
#: RunConfig fields naming a teacher; a family lists the ones that distil into it (FamilySpec.teachers).
TEACHER_FIELDS = ("teacher_backbone", "teacher_ckpt")
#: The head --use-anchor picks (the original tool's flag).
ANCHOR_HEAD = "anchor"


def flag_name(field_name: str) -> str:
    """The `uhd train` flag of a RunConfig field: its name with dashes, or the field's own ``flag``
    (``extra_train_dirs`` holds several folders, each given with ``--extra-train-dir``)."""
    from uhd_core.config import RunConfig  # same floor; config imports this module first

    field = RunConfig.model_fields.get(field_name)
    extra = (field.json_schema_extra or {}) if field is not None else {}
    return str(extra.get("flag") or "--" + field_name.replace("_", "-"))


def head_name_of(cfg: RunConfig) -> str:
    """Registry key of the head ``cfg`` trains: the anchor head with --use-anchor, else the family's default."""
    return ANCHOR_HEAD if cfg.use_anchor else family(cfg.arch).default_head


def head_overrides(arch: str, head: str) -> dict[str, bool]:
    """The RunConfig overrides that make ``--arch arch`` train ``head`` (inverse of head_name_of)."""
    spec = family(arch)
    if head == spec.default_head:
        return {}
    if head == ANCHOR_HEAD and head in spec.heads:
        return {"use_anchor": True}
    raise ConfigError(f"--arch {arch} cannot select a {head} head (it has: {', '.join(spec.heads)})")


def check_implemented(cfg: RunConfig) -> None:
    """Raise ConfigError if the config asks for a feature that is not built yet or flags that contradict."""
    for name, feature in PENDING_FEATURES.items():
        default = type(cfg).model_fields[name].default
        if getattr(cfg, name) != default:
            raise ConfigError(f"{flag_name(name)} needs {feature}, which is not implemented yet")
    if cfg.use_anchor and not cfg.anchors and not cfg.auto_anchors:
        raise ConfigError("--use-anchor needs anchors: pass --anchors 'w,h w,h ...' or --auto-anchors")
    if cfg.resume and cfg.ckpt:
        raise ConfigError("--resume and --ckpt exclude each other: --resume continues a run, --ckpt starts a new one "
                          "from a checkpoint's weights")
    if cfg.ckpt_non_strict and not cfg.ckpt and not cfg.resume:
        raise ConfigError("--ckpt-non-strict needs --ckpt PATH (the checkpoint to initialise from)")
    _check_teachers(cfg)
    check_img_size_fits_stride(cfg, cfg.img_size)
    _check_head(cfg)


def _check_teachers(cfg: RunConfig) -> None:
    if (cfg.distill_kl > 0 or cfg.distill_box_l1 > 0) and not cfg.teacher_ckpt:
        raise ConfigError("--distill-kl / --distill-box-l1 need --teacher-ckpt PATH (a transformer checkpoint)")
    if cfg.distill_feat > 0 and not cfg.teacher_backbone:
        raise ConfigError("--distill-feat needs --teacher-backbone PATH and --teacher-backbone-arch")
    if cfg.teacher_backbone and not cfg.teacher_backbone_arch:
        raise ConfigError("--teacher-backbone needs --teacher-backbone-arch (dinov3_vits16, dinov3_vitb16 or vit_tiny)")
    if cfg.teacher_backbone and cfg.teacher_ckpt:
        raise ConfigError("--teacher-backbone and --teacher-ckpt exclude each other: one teacher per run")
    spec = family(cfg.arch)
    for flag in TEACHER_FIELDS:
        if not getattr(cfg, flag) or flag in spec.teachers:
            continue
        students = [f for f in families() if flag in f.teachers]
        if not students:
            raise ConfigError(f"{flag_name(flag)}: no --arch takes this teacher")
        raise ConfigError(f"{flag_name(flag)} distils {students[0].teachers[flag]}; use "
                          + " or ".join(f"--arch {f.name}" for f in students))


def _check_head(cfg: RunConfig) -> None:
    spec, head = family(cfg.arch), head_name_of(cfg)
    if head in spec.heads:
        return
    carriers = [f.title for f in families() if head in f.heads]
    where = f"--use-anchor is a {' / '.join(carriers)} head" if carriers else "no --arch carries it"
    raise ConfigError(f"--arch {cfg.arch} has no {head} head (it has: {', '.join(spec.heads)}); {where}")


def grid_stride(cfg: RunConfig) -> tuple[int, str] | None:
    """(stride, how messages name it) when ``cfg``'s head predicts on its backbone's grid, else None."""
    spec = family(cfg.arch)
    if not head_class(head_name_of(cfg)).grid:
        return None
    if spec.stride_field in type(cfg).model_fields:
        return int(getattr(cfg, spec.stride_field)), flag_name(spec.stride_field)
    if spec.stride_field:  # one of the family's own --arch-options
        return int(getattr(cfg.family_options, spec.stride_field)), f"--arch-options {spec.stride_field}"
    if spec.stride:
        return spec.stride, f"the {spec.title} output stride"
    return None


def size_multiple(cfg: RunConfig, base: int = 1) -> int:
    """The smallest step in which input sides may grow: lcm(base, the grid stride)."""
    stride = grid_stride(cfg)
    return math.lcm(base, stride[0]) if stride else base


def check_img_size_fits_stride(cfg: RunConfig, size: tuple[int, int], flag: str = "--img-size") -> None:
    """ConfigError unless a grid head's input sides are multiples of its output stride (transformers take any size).

    The grid heads map normalized boxes onto a ceil(side / stride) grid whose cells are `stride`
    pixels apart in the image: at 65 px, 5 cells span 80 px and targets drift up to a cell away from
    the features that see them. Nothing fails; the model just learns worse, so refuse it up front.
    """
    stride = grid_stride(cfg)
    if stride is None:
        return
    s, what = stride
    if any(side % s for side in size):
        h, w = size
        fit = f"{-(-h // s) * s}x{-(-w // s) * s}"
        raise ConfigError(f"{flag} {h}x{w}: sides must be multiples of {what} {s} (e.g. {fit})")
