"""The one typed description of a training run.

`RunConfig` is built from an optional preset YAML and then the CLI flags the user actually typed.
It is stored verbatim (``model_dump(mode="json")``) in every checkpoint, so eval, export and resume
need nothing but the checkpoint path.

Field names are the original tool's flag names with dashes turned into underscores
(``--cnn-width`` -> ``cnn_width``); the CLI is generated from these fields, so the flag list lives
in exactly one place.

What each model family (``--arch``) allows — its heads, its grid stride, the teachers that distil into
it, its own ``--arch-options`` — is declared by the family itself and read from uhd_core.registry;
the cross-field rules are in uhd_core.config_checks and the preset files in uhd_core.presets (both
re-exported here).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from uhd_core.config_checks import (  # noqa: F401  (re-exported: the config's rules)
    PENDING_FEATURES,
    check_img_size_fits_stride,
    check_implemented,
    flag_name,
    head_name_of,
)
from uhd_core import config_forms as forms
from uhd_core.limits import DEFAULT_MAX_IMAGE_PIXELS
from uhd_core.errors import ConfigError, bounded
from uhd_core.presets import available_presets, read_yaml_mapping, resolve_preset  # noqa: F401  (re-exported)
from uhd_core.registry import FAMILIES, family, load_families

#: The original tool's default augmentation path; accepted as the name of the built-in config.
ORIGINAL_DEFAULT_AUG_CONFIG = "uhd/aug.yaml"


def _flag(help_text: str, *, group: str, cli: bool = True, **extra: Any) -> dict[str, Any]:
    return {"description": help_text, "json_schema_extra": {"group": group, "cli": cli, **extra}}


class RunConfig(BaseModel):
    """Every setting of a training run (frozen; unknown keys are an error)."""

    # allow_inf_nan=False: every float field (learning rate, weight decay, clip norm, loss weights, EMA
    # decay, splits, anchors, ...) must be finite. `--lr inf` used to be accepted and wrote NaN into the
    # weights on the first step; one model-wide rule also covers fields added later.
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    # --- model family --------------------------------------------------------------------------
    arch: str = Field("cnn", **_flag("Model family: a registered backbone (cnn and transformer are built in).", group="model"))
    #: A family's own hyperparameters (FamilySpec.options), so a new family needs no RunConfig field.
    #: Stored as sorted (key, value) pairs (the config stays hashable), written as a mapping.
    arch_options: tuple[tuple[str, str | int | float | bool], ...] = Field(
        (), **_flag("Options of the --arch's own family as 'key=value,key=value' (families that declare options; "
                    "cnn and transformer use the flags below).", group="model", metavar="'KEY=VALUE,...'")
    )
    # --- data ----------------------------------------------------------------------------------
    image_dir: str = Field(
        "data/wholebody34/obj_train_data",
        **_flag("YOLO folder: images with same-stem .txt labels (class cx cy w h, normalized).", group="data"),
    )
    extra_train_dirs: tuple[str, ...] = Field(
        (), **_flag("More YOLO folders whose every image is for training only (repeatable or comma-separated; a "
                    "preset takes a list); the val split stays --image-dir's.", group="data", metavar="DIR",
                    flag="--extra-train-dir", repeatable=True)
    )
    min_box_px: float = Field(
        0.0, ge=0.0, **_flag("Drop training boxes whose longer side is under N input pixels (0 = keep all; val keeps "
                             "every box); an image left without boxes is dropped too.", group="data")
    )
    train_split: float = Field(0.8, gt=0.0, le=1.0, **_flag("Fraction of images used for training.", group="data"))
    val_split: float = Field(0.2, ge=0.0, lt=1.0, **_flag("Fraction of images used for validation.", group="data"))
    img_size: tuple[int, int] = Field(
        (64, 64), **_flag("Input size HxW (images are resized to it once and cached).", group="data", metavar="HxW")
    )
    classes: tuple[int, ...] = Field(
        (0,), **_flag("Comma-separated source class ids to train on, mapped to 0..K-1 in this order.", group="data")
    )
    aug_config: str = Field(
        ORIGINAL_DEFAULT_AUG_CONFIG,
        **_flag("Augmentation YAML (data_augment: ops in order). 'uhd/aug.yaml' = the built-in default.", group="data"),
    )
    num_workers: int = Field(2, ge=0, **_flag("Data-loader worker processes.", group="data"))
    resize_interpolation: Literal["area", "linear", "nearest"] = Field(
        "area", **_flag("OpenCV interpolation used for the one-time resize (recorded for eval/export).", group="data")
    )
    cache_dir: str = Field(
        "", **_flag("Where decoded, resized images are cached ('' = $UHD_CACHE_DIR or ~/.cache/uhd).", group="data")
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, ge=1,
        **_flag("Images whose header declares more pixels are skipped (and named) without being decoded: a "
                "decompression bomb cannot exhaust memory.", group="data"),
    )
    follow_symlinks: bool = Field(
        False, **_flag("Also read images and labels that are symlinks to files outside --image-dir (otherwise "
                       "skipped and named).", group="data"),
    )
    # --- run -----------------------------------------------------------------------------------
    exp_name: str = Field("default", **_flag("Run name: outputs go to <runs-dir>/<exp-name>/.", group="run"))
    runs_dir: str = Field("runs", **_flag("Parent folder of run directories.", group="run"))
    batch_size: int = Field(64, ge=1, **_flag("Batch size.", group="run"))
    epochs: int = Field(50, ge=1, **_flag("Number of epochs (a larger value on --resume extends training).", group="run"))
    resume: str = Field("", **_flag("Checkpoint to resume (model, EMA, optimizer, scheduler, RNG, epoch).", group="run"))
    ckpt: str = Field("", **_flag("Initialise weights from this checkpoint (weights only).", group="run"))
    ckpt_non_strict: bool = Field(False, **_flag("Allow missing/unexpected keys with --ckpt.", group="run"))
    device: str = Field("auto", **_flag("cuda, cuda:N or cpu ('auto' = cuda if available).", group="run"))
    threads: int = Field(
        0, ge=0, **_flag("torch threads per training process (0 = auto: 1 on the CPU, which keeps training fast when "
                         "another process uses a core; see docs/measurements.md).", group="run"))
    devices: int = Field(
        1, ge=1, **_flag("Training processes on this machine (DistributedDataParallel through torch.distributed's "
                         "elastic launcher, as torchrun; one per GPU on CUDA). --batch-size is per process.", group="run")
    )
    sync_bn: bool = Field(False, **_flag("SyncBatchNorm across processes (CUDA, --devices > 1).", group="run"))
    seed: int = Field(42, **_flag("Random seed (split, shuffling, augmentation, init).", group="run"))
    log_interval: int = Field(10, ge=1, **_flag("Log every N steps.", group="run"))
    eval_interval: int = Field(1, ge=1, **_flag("Evaluate every N epochs.", group="run"))
    exist_ok: bool = Field(False, **_flag("Allow writing into an existing run dir that holds checkpoints.", group="run"))
    # --- optimisation --------------------------------------------------------------------------
    lr: float = Field(0.001, gt=0.0, **_flag("AdamW learning rate (cosine-annealed over --epochs).", group="optim"))
    weight_decay: float = Field(0.0001, ge=0.0, **_flag("AdamW weight decay.", group="optim"))
    grad_clip_norm: float = Field(5.0, ge=0.0, **_flag("Gradient-norm clip (0 disables).", group="optim"))
    max_nonfinite_steps: int = Field(
        20, ge=1, **_flag("Stop after this many consecutive steps with a NaN/inf loss (each is skipped).", group="optim")
    )
    use_amp: bool = Field(False, **_flag("Mixed precision: fp16+GradScaler on CUDA, bf16 autocast on CPU.", group="optim"))
    use_ema: bool = Field(False, **_flag("Keep an exponential moving average of the weights (used for eval).", group="optim"))
    ema_decay: float = Field(0.9998, gt=0.0, lt=1.0, **_flag("EMA decay (ramped up over the first updates).", group="optim"))
    # --- evaluation / decoding -----------------------------------------------------------------
    conf_thresh: float = Field(0.3, ge=0.0, le=1.0, **_flag("Score threshold for decoded detections.", group="eval"))
    topk: int = Field(50, ge=1, **_flag("Keep at most this many detections per image.", group="eval"))
    # --- CNN -----------------------------------------------------------------------------------
    activation: Literal["relu", "swish"] = Field("swish", **_flag("Activation function.", group="cnn"))
    cnn_width: int = Field(32, ge=4, **_flag("CNN channel width.", group="cnn"))
    use_skip: bool = Field(False, **_flag("Sum pooled shallow features into the last stage.", group="cnn"))
    output_stride: Literal[4, 8, 16] = Field(16, **_flag("CNN output stride.", group="cnn"))
    last_se: Literal["none", "se", "ese"] = Field("none", **_flag("Squeeze-excitation on the last stage.", group="cnn"))
    last_width_scale: float = Field(1.0, ge=1.0, **_flag("Width multiplier of the last stage.", group="cnn"))
    head_conv: int = Field(
        0, ge=0, **_flag("Channels of a shared 3x3 conv before the 1x1 output convs (0 = the original's plain 1x1 heads).",
                         group="cnn")
    )
    heatmap_style: Literal["gaussian", "elliptical", "single_peak"] = Field(
        "gaussian", **_flag("CenterNet heatmap targets: Gaussian splats or the original's single peak.", group="cnn")
    )
    # --- anchor head ---------------------------------------------------------------------------
    use_anchor: bool = Field(False, **_flag("Use the YOLO-style anchor head instead of CenterNet.", group="anchor"))
    anchors: tuple[tuple[float, float], ...] = Field(
        (), **_flag("Anchors as normalized 'w,h w,h ...'.", group="anchor", metavar="'W,H W,H ...'")
    )
    auto_anchors: bool = Field(False, **_flag("Compute anchors with k-means on the training boxes.", group="anchor"))
    num_anchors: int = Field(3, ge=1, **_flag("Number of anchors to compute.", group="anchor"))
    iou_loss: Literal["iou", "giou", "ciou"] = Field(
        "giou", **_flag("IoU kind of the box loss (anchor head) and of the (1 - IoU) term (transformer).",
                        group="anchor")
    )
    # Default from docs/measurements.md: yolov5 beat the original's rule at 150 epochs on real data
    # (mAP@0.5 0.085 vs 0.079 and 0.112 vs 0.049 on two seeds/splits).
    anchor_assign: Literal["best", "yolov5"] = Field(
        "yolov5", **_flag("Anchor target rule: 'best' = centre cell, best-IoU anchor (sigmoid/exp boxes); 'yolov5' = "
                        "every anchor within 4x, centre + 2 neighbour cells (YOLOv5 boxes).", group="anchor")
    )
    # --- transformer ---------------------------------------------------------------------------
    num_queries: int = Field(10, ge=1, **_flag("Transformer: number of object queries.", group="transformer"))
    d_model: int = Field(64, ge=8, **_flag("Transformer: model width (divisible by 4 and by --heads).", group="transformer"))
    heads: int = Field(4, ge=1, **_flag("Transformer: attention heads.", group="transformer"))
    layers: int = Field(3, ge=1, **_flag("Transformer: encoder and decoder layers (each).", group="transformer"))
    dim_feedforward: int = Field(128, ge=8, **_flag("Transformer: feed-forward width.", group="transformer"))
    use_fpn: bool = Field(False, **_flag("Transformer: tokens from several feature maps (see --fpn-layout).",
                                         group="transformer"))
    fpn_layout: Literal["s2-s2-s4-s8", "s4-s8-s16"] = Field(
        "s2-s2-s4-s8", **_flag("Transformer --use-fpn token maps by stride: the original's s2-s2-s4-s8 (2,368 tokens "
                               "at 64x64) or s4-s8-s16 (336 tokens).", group="transformer")
    )
    detr_cls_weight: float = Field(1.0, ge=0.0, **_flag("Transformer: class weight in matching cost and loss.",
                                                        group="transformer"))
    detr_l1_weight: float = Field(5.0, ge=0.0, **_flag("Transformer: box-L1 weight in matching cost and loss.",
                                                       group="transformer"))
    detr_iou_weight: float = Field(2.0, ge=0.0, **_flag("Transformer: (1 - IoU) weight in matching cost and loss "
                                                        "(IoU kind from --iou-loss).", group="transformer"))
    detr_no_object_weight: float = Field(0.1, ge=0.0, **_flag("Transformer: cross-entropy weight of the no-object "
                                                              "class.", group="transformer"))
    # --- distillation --------------------------------------------------------------------------
    teacher_ckpt: str = Field("", **_flag("Teacher checkpoint (a transformer run) for query distillation.",
                                          group="distill"))
    teacher_arch: str = Field("", **_flag("Teacher model family (default: from its checkpoint).", group="distill"))
    teacher_num_queries: int | None = Field(None, **_flag("Override the teacher's queries.", group="distill"))
    teacher_d_model: int | None = Field(None, **_flag("Override the teacher's width.", group="distill"))
    teacher_heads: int | None = Field(None, **_flag("Override the teacher's heads.", group="distill"))
    teacher_layers: int | None = Field(None, **_flag("Override the teacher's layers.", group="distill"))
    teacher_dim_feedforward: int | None = Field(None, **_flag("Override the teacher's feed-forward width.",
                                                              group="distill"))
    teacher_use_skip: bool | None = Field(None, **_flag("Override the teacher's use-skip.", group="distill"))
    teacher_activation: str = Field("", **_flag("Override the teacher's activation.", group="distill"))
    teacher_use_fpn: bool | None = Field(None, **_flag("Override the teacher's use-fpn.", group="distill"))
    teacher_img_size: tuple[int, int] | None = Field(
        None, **_flag("Teacher input size HxW (default: the one in its checkpoint); each augmented sample is also "
                      "rendered at this size for the teacher.", group="distill", metavar="HxW")
    )
    teacher_backbone: str = Field("", **_flag("ViT teacher weights file (official DINOv3 .pth or vitt_distill.pt) for "
                                              "feature distillation into the CNN.", group="distill"))
    teacher_backbone_arch: str = Field("", **_flag("ViT teacher architecture: dinov3_vits16, dinov3_vitb16 or vit_tiny.",
                                                   group="distill"))
    distill_kl: float = Field(0.0, ge=0.0, **_flag("Weight of KL(teacher || student) on per-query class "
                                                   "distributions.", group="distill"))
    distill_box_l1: float = Field(0.0, ge=0.0, **_flag("Weight of the L1 between student and teacher boxes.",
                                                       group="distill"))
    distill_temperature: float = Field(1.0, gt=0.0, **_flag("Distillation temperature T (KL at T, scaled by T^2).",
                                                            group="distill"))
    distill_cosine: bool = Field(False, **_flag("Ramp the distillation weights from 0 along a cosine over training.",
                                                group="distill"))
    distill_query_match: Literal["hungarian", "index"] = Field(
        "hungarian", **_flag("Pair student and teacher queries by a one-to-one match of their predictions, or by "
                             "index (the original; needs equal query counts).", group="distill")
    )
    distill_feat: float = Field(0.0, ge=0.0, **_flag("Weight of the feature term: student features (1x1 adapter) vs "
                                                     "the ViT teacher's patch features.", group="distill"))
    distill_feat_loss: Literal["l1", "cosine", "mse"] = Field(
        "l1", **_flag("Feature term on channel-normalized features: L1 (the original's), cosine or MSE.",
                      group="distill")
    )
    # --- provenance (not a flag) ---------------------------------------------------------------
    preset: str = Field("", **_flag("Preset this config was built from (informational).", group="run", cli=False))

    # ---- the model family ---------------------------------------------------------------------
    @field_validator("arch")
    @classmethod
    def _check_arch(cls, value: str) -> str:
        load_families()  # the built-in families register when their modules are first imported
        if value not in FAMILIES:
            raise ValueError(f"unknown architecture {bounded(repr(value))}; known: {', '.join(FAMILIES.names())}")
        return value

    _parse_arch_options = field_validator("arch_options", mode="before")(staticmethod(forms.parse_key_values))

    @field_validator("arch_options")
    @classmethod
    def _check_arch_options(cls, value: tuple[tuple[str, Any], ...], info: ValidationInfo) -> tuple[tuple[str, Any], ...]:
        arch = info.data.get("arch")
        if arch is None:  # --arch itself was refused; that error is the one to read
            return value
        return validate_family_options(arch, dict(value))

    @field_serializer("arch_options")
    def _dump_arch_options(self, value: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
        return dict(value)

    # ---- single fields: the original tool's string forms and ranges (uhd_core.config_forms) -----
    _check_exp_name = field_validator("exp_name")(staticmethod(forms.check_exp_name))
    _parse_img_size = field_validator("img_size", "teacher_img_size", mode="before")(staticmethod(forms.parse_img_size))
    _check_img_size = field_validator("img_size", "teacher_img_size")(staticmethod(forms.check_img_size))
    _parse_extra_dirs = field_validator("extra_train_dirs", mode="before")(staticmethod(forms.parse_path_list))
    _parse_classes = field_validator("classes", mode="before")(staticmethod(forms.parse_classes))
    _check_classes = field_validator("classes")(staticmethod(forms.check_classes))
    _parse_anchors = field_validator("anchors", mode="before")(staticmethod(forms.parse_anchors))
    _check_anchors = field_validator("anchors")(staticmethod(forms.check_anchors))

    @model_validator(mode="after")
    def _check_splits(self) -> RunConfig:
        if self.train_split + self.val_split > 1.0 + 1e-9:
            raise ValueError(f"train_split + val_split must be <= 1 (got {self.train_split} + {self.val_split})")
        return self

    # ---- derived values -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def head_name(self) -> str:
        """Registry key of the DetectorHead this config trains (the family's default, or anchor with --use-anchor)."""
        return head_name_of(self)

    @property
    def family_options(self) -> BaseModel | None:
        """The family's own options (its FamilySpec.options model, defaults filled in); None if it has none."""
        model = family(self.arch).options
        return model(**dict(self.arch_options)) if model is not None else None


def validate_family_options(arch: str, values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The given options checked by ``arch``'s options model -> sorted (key, typed value) pairs.

    Only given keys are stored (the family's defaults apply to the rest), in the types the model gives them.
    """
    model = family(arch).options
    if model is None:
        if values:
            raise ValueError(f"--arch {arch} takes no options (got {bounded(', '.join(map(str, values)), 80)})")
        return ()
    unknown = [k for k in values if k not in model.model_fields]
    if unknown:
        raise ValueError(f"--arch {arch} has no option {bounded(repr(unknown[0]), 80)} "
                         f"(its options: {', '.join(model.model_fields) or 'none'})")
    try:
        typed = _options_instance(model, values).model_dump(include=set(values))
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    return tuple(sorted(typed.items()))


def _options_instance(model: type[BaseModel], values: Mapping[str, Any]) -> BaseModel:
    """``model(**values)``; a text value (the flag's) its field refuses is read again as a number or bool.

    Only refused values are re-read, so a text option keeps a text value such as '12'.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        refused = {e["loc"][0] for e in exc.errors() if e["loc"]}
        again = {k: forms.scalar(v) if k in refused and isinstance(v, str) else v for k, v in values.items()}
        if again == values:
            raise
        return model(**again)


def check_keys(data: dict[str, Any], source: str) -> None:
    valid = set(RunConfig.model_fields)
    unknown = [k for k in data if k not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key)[:100].replace("-", "_"), valid, n=1)
            hints.append(repr(bounded(key, 80)) + (f" (did you mean {close[0]!r}?)" if close else ""))
            if len(hints) == 10:  # a preset of 10k unknown keys still gets one short line
                hints.append(f"and {len(unknown) - 10} more")
                break
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(sorted(valid))}"
        )


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None,
                 base: dict[str, Any] | None = None) -> RunConfig:
    """Merge base (e.g. a checkpoint's config) < preset YAML < typed overrides into a RunConfig."""
    values: dict[str, Any] = dict(base or {})
    if preset:
        path = resolve_preset(preset)
        data = read_yaml_mapping(path)
        check_keys(data, str(path))
        values.update(data)
        values["preset"] = preset
    if overrides:
        check_keys(overrides, "overrides")
        values.update(overrides)
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        # An item of a tuple field (an anchor side) is named by the flag and its position in it.
        where = (flag_name(loc[0]) + "".join(f"[{i}]" for i in loc[1:])) if loc else "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "finite_number":
            msg = f"{msg}, got {bounded(err.get('input'), 40)}"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


#: Fields an earlier UHD wrote into checkpoints and that no longer exist (the feature was dropped).
REMOVED_FIELDS = frozenset({"detr_matcher"})


def stored_config(values: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's stored config, minus fields later UHD versions removed (REMOVED_FIELDS).

    Any other unknown key still fails in build_config: it means a checkpoint from a newer UHD.
    """
    return {k: v for k, v in values.items() if k not in REMOVED_FIELDS}


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
