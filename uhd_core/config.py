"""The one typed description of a training run.

`RunConfig` is built from an optional preset YAML and then the CLI flags the user actually typed.
It is stored verbatim (``model_dump(mode="json")``) in every checkpoint, so eval, export and resume
need nothing but the checkpoint path.

Field names are the original tool's flag names with dashes turned into underscores
(``--cnn-width`` -> ``cnn_width``); the CLI is generated from these fields, so the flag list lives
in exactly one place.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from uhd_core.data.files import DEFAULT_MAX_IMAGE_PIXELS
from uhd_core.data.labels import MAX_CLASS_ID
from uhd_core.errors import ConfigError, bounded
from uhd_core.yaml_io import YamlRefused, load_yaml

#: The original tool's default augmentation path; accepted as the name of the built-in config.
ORIGINAL_DEFAULT_AUG_CONFIG = "uhd/aug.yaml"
#: Longest --exp-name (one file name: NAME_MAX of common file systems).
MAX_EXP_NAME_BYTES = 255


def _flag(help_text: str, *, group: str, cli: bool = True, **extra: Any) -> dict[str, Any]:
    return {"description": help_text, "json_schema_extra": {"group": group, "cli": cli, **extra}}


class RunConfig(BaseModel):
    """Every setting of a training run (frozen; unknown keys are an error)."""

    # allow_inf_nan=False: every float field (learning rate, weight decay, clip norm, loss weights, EMA
    # decay, splits, anchors, ...) must be finite. `--lr inf` used to be accepted and wrote NaN into the
    # weights on the first step; one model-wide rule also covers fields added later.
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    # --- model family --------------------------------------------------------------------------
    arch: Literal["cnn", "transformer"] = Field("cnn", **_flag("Model family.", group="model"))
    # --- data ----------------------------------------------------------------------------------
    image_dir: str = Field(
        "data/wholebody34/obj_train_data",
        **_flag("YOLO folder: images with same-stem .txt labels (class cx cy w h, normalized).", group="data"),
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

    # ---- the run dir --------------------------------------------------------------------------
    @field_validator("exp_name")
    @classmethod
    def _check_exp_name(cls, value: str) -> str:
        # The run dir is <runs-dir>/<exp-name>: a name with a separator, '..', or an absolute path would
        # put it elsewhere (`--exp-name ..` made the current folder the run dir and overwrote its
        # config.yaml). Checked here so presets and resumed configs obey it as well as the flag.
        if value in ("", ".", ".."):
            raise ValueError(f"{value!r} is not a folder name; give one name such as 'person_cnn' "
                             "(the run dir is <runs-dir>/<exp-name>)")
        bad = next((c for c in ("/", "\\", "\0") if c in value), None)
        if bad is not None:
            raise ValueError(f"{bounded(repr(value))} must be one folder name, without {bad!r}; use --runs-dir "
                             "to choose the parent folder (the run dir is <runs-dir>/<exp-name>)")
        if len(value.encode("utf-8", "surrogateescape")) > MAX_EXP_NAME_BYTES:
            raise ValueError(f"{bounded(repr(value))} is longer than {MAX_EXP_NAME_BYTES} bytes, "
                             "the longest file name most file systems allow")
        return value

    # ---- parsing of the original tool's string forms -------------------------------------------
    @field_validator("img_size", "teacher_img_size", mode="before")
    @classmethod
    def _parse_img_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.lower().replace(" ", "").split("x")
            if len(parts) == 1:
                parts = parts * 2
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"img_size must look like 64x64 (HxW), got {value!r}")
            return (int(parts[0]), int(parts[1]))
        if isinstance(value, int):
            return (value, value)
        return value

    @field_validator("img_size", "teacher_img_size")
    @classmethod
    def _check_img_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is None:
            return value
        if min(value) < 16 or max(value) > 4096:
            raise ValueError(f"img_size sides must be within 16..4096, got {value[0]}x{value[1]}")
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _parse_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = [v for v in value.replace(" ", "").split(",") if v]
            if not items or not all(v.isdigit() for v in items):
                raise ValueError(f"classes must be comma-separated integers like 0,1 — got {value!r}")
            return tuple(int(v) for v in items)
        if isinstance(value, int):
            return (value,)
        return value

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("classes must name at least one class id")
        if not all(0 <= v <= MAX_CLASS_ID for v in value):
            raise ValueError(f"class ids must be within 0..{MAX_CLASS_ID}, got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"classes has duplicates: {value}")
        return value

    @field_validator("anchors", mode="before")
    @classmethod
    def _parse_anchors(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs = []
            for item in value.split():
                wh = item.split(",")
                try:
                    pairs.append((float(wh[0]), float(wh[1])))
                except (ValueError, IndexError):
                    raise ValueError(f"anchors must look like '0.08,0.10 0.15,0.20', bad item {item!r}") from None
                if len(wh) != 2:
                    raise ValueError(f"anchors must look like '0.08,0.10 0.15,0.20', bad item {item!r}")
            return tuple(pairs)
        return value

    @field_validator("anchors")
    @classmethod
    def _check_anchors(cls, value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        # Normalized sides: a NaN, inf, 0 or > 1 anchor would train to NaN or match no box.
        if not all(0.0 < side <= 1.0 for pair in value for side in pair):
            raise ValueError(f"anchor sides are normalized and must be within (0, 1], got {value}")
        return value

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
        """Registry key of the DetectorHead this config trains."""
        return "anchor" if self.use_anchor else DEFAULT_HEAD_BY_ARCH[self.arch]


#: The head family each --arch trains unless --use-anchor picks the anchor head.
DEFAULT_HEAD_BY_ARCH = {"cnn": "centernet", "transformer": "detr"}
#: Heads each --arch can carry (the transformer's queries feed only its set-prediction head).
HEADS_BY_ARCH = {"cnn": ("centernet", "anchor"), "transformer": ("detr",)}
#: --arch -> the field holding its output stride, for architectures whose heads predict on a grid
#: (input sides must be multiples of it); the transformer predicts normalized boxes at any size.
GRID_STRIDE_FIELD_BY_ARCH = {"cnn": "output_stride"}
#: Teacher flag -> (the student --arch it distils into, what it distils).
TEACHER_STUDENT_ARCH = {
    "teacher_backbone": ("cnn", "ViT features into the CNN"),
    "teacher_ckpt": ("transformer", "a transformer teacher's queries into a transformer student"),
}

# ------------------------------------------------------------------------------------------------
# Flags whose feature is not built yet: a non-default value is an error naming the flag, never a
# silent no-op. Entries leave this table as their feature lands.
PENDING_FEATURES: dict[str, str] = {}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_implemented(cfg: RunConfig) -> None:
    """Raise ConfigError if the config asks for a feature that is not built yet."""
    for name, feature in PENDING_FEATURES.items():
        default = RunConfig.model_fields[name].default
        if getattr(cfg, name) != default:
            raise ConfigError(f"{flag_name(name)} needs {feature}, which is not implemented yet")
    if cfg.use_anchor and not cfg.anchors and not cfg.auto_anchors:
        raise ConfigError("--use-anchor needs anchors: pass --anchors 'w,h w,h ...' or --auto-anchors")
    if cfg.resume and cfg.ckpt:
        raise ConfigError("--resume and --ckpt exclude each other: --resume continues a run, --ckpt starts a new one "
                          "from a checkpoint's weights")
    if cfg.ckpt_non_strict and not cfg.ckpt and not cfg.resume:
        raise ConfigError("--ckpt-non-strict needs --ckpt PATH (the checkpoint to initialise from)")
    if (cfg.distill_kl > 0 or cfg.distill_box_l1 > 0) and not cfg.teacher_ckpt:
        raise ConfigError("--distill-kl / --distill-box-l1 need --teacher-ckpt PATH (a transformer checkpoint)")
    if cfg.distill_feat > 0 and not cfg.teacher_backbone:
        raise ConfigError("--distill-feat needs --teacher-backbone PATH and --teacher-backbone-arch")
    if cfg.teacher_backbone and not cfg.teacher_backbone_arch:
        raise ConfigError("--teacher-backbone needs --teacher-backbone-arch (dinov3_vits16, dinov3_vitb16 or vit_tiny)")
    if cfg.teacher_backbone and cfg.teacher_ckpt:
        raise ConfigError("--teacher-backbone and --teacher-ckpt exclude each other: one teacher per run")
    for flag, (student_arch, what) in TEACHER_STUDENT_ARCH.items():
        if getattr(cfg, flag) and cfg.arch != student_arch:
            raise ConfigError(f"{flag_name(flag)} distils {what}; use --arch {student_arch}")
    check_img_size_fits_stride(cfg, cfg.img_size)
    if cfg.head_name not in HEADS_BY_ARCH[cfg.arch]:
        raise ConfigError(f"--arch {cfg.arch} has no {cfg.head_name} head (it has: {', '.join(HEADS_BY_ARCH[cfg.arch])}); "
                          "--use-anchor is a CNN head")


def check_img_size_fits_stride(cfg: RunConfig, size: tuple[int, int], flag: str = "--img-size") -> None:
    """ConfigError unless a CNN's input sides are multiples of its output stride (transformers take any size).

    The grid heads map normalized boxes onto a ceil(side / stride) grid whose cells are `stride`
    pixels apart in the image: at 65 px, 5 cells span 80 px and targets drift up to a cell away from
    the features that see them. Nothing fails; the model just learns worse, so refuse it up front.
    """
    field = GRID_STRIDE_FIELD_BY_ARCH.get(cfg.arch)
    s = getattr(cfg, field) if field else 1
    if any(side % s for side in size):
        h, w = size
        fit = f"{-(-h // s) * s}x{-(-w // s) * s}"
        raise ConfigError(f"{flag} {h}x{w}: sides must be multiples of --output-stride {s} (e.g. {fit})")


# ------------------------------------------------------------------------------------------------
# Presets

def _preset_dirs() -> list[Path]:
    """Preset search path: the checkout's presets/ first, then the copy installed in the package."""
    dirs = [Path(__file__).resolve().parent.parent / "presets"]
    try:
        dirs.append(Path(str(resources.files("uhd_core") / "presets")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - zipped installs
        pass
    return [d for d in dirs if d.is_dir()]


def available_presets() -> list[str]:
    names: set[str] = set()
    for d in _preset_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (presets/NAME.yaml) or a path to a YAML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    for d in _preset_dirs():
        path = d / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets()) or 'none'}")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except YamlRefused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


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
