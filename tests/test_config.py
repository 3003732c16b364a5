"""RunConfig: presets, typed overrides, the original tool's string forms, pending-feature errors."""

from __future__ import annotations

import json

import pydantic
import pytest
import yaml

import uhd_core.config as config_module
from uhd_core.config import (
    RunConfig,
    available_presets,
    build_config,
    check_implemented,
    config_to_yaml,
    resolve_preset,
)
from uhd_core.errors import ConfigError


@pytest.mark.parametrize("name", ["cnn", "quickstart"])
def test_documented_presets_load_with_their_yaml_values(name):
    cfg = build_config(name)
    assert cfg.preset == name
    data = yaml.safe_load(resolve_preset(name).read_text())
    assert data, "a preset sets something"
    expected = RunConfig(**data)  # the same values coerced (e.g. lists -> tuples)
    for key in data:
        assert getattr(cfg, key) == getattr(expected, key), key
    check_implemented(cfg)  # a shipped preset never asks for a feature that is not built


def test_every_preset_file_loads():
    names = available_presets()
    assert {"cnn", "quickstart", "transformer", "transformer_l4", "transformer_grow", "transformer_distill"} <= set(names)
    # presets that start from another checkpoint say so; the rest run as they are
    needs = {"transformer_grow": {"ckpt": "x.pt"}, "transformer_distill": {"teacher_ckpt": "t.pt"}}
    for name in names:
        check_implemented(build_config(name, needs.get(name)))


def test_unknown_preset_name_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        build_config("no_such_preset")
    msg = str(err.value)
    assert "no_such_preset" in msg
    for name in available_presets():
        assert name in msg


def test_unknown_preset_key_is_named_with_a_hint_and_the_valid_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("cnn_widht: 16\nepochs: 3\n")
    with pytest.raises(ConfigError) as err:
        build_config(str(path))
    msg = str(err.value)
    assert "cnn_widht" in msg
    assert "did you mean 'cnn_width'" in msg
    assert "valid keys" in msg
    for key in ("cnn_width", "epochs", "img_size", "use_anchor"):
        assert key in msg
    assert "\n" not in msg  # shown as one line by the CLI


def test_preset_path_with_bad_values_names_the_flag(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("batch_size: 0\n")
    with pytest.raises(ConfigError, match="--batch-size"):
        build_config(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        build_config(str(path))
    path.write_text("epochs: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        build_config(str(path))


def test_typed_overrides_beat_the_preset():
    preset = build_config("cnn")
    cfg = build_config("cnn", {"cnn_width": 8, "epochs": 2, "use_skip": False})
    assert (cfg.cnn_width, cfg.epochs, cfg.use_skip) == (8, 2, False)
    assert (preset.cnn_width, preset.epochs, preset.use_skip) != (8, 2, False)
    assert cfg.use_ema == preset.use_ema and cfg.lr == preset.lr  # untouched fields keep the preset's value
    assert cfg.preset == "cnn"


def test_base_is_overridden_by_preset_and_flags():
    cfg = build_config("quickstart", {"epochs": 7}, base={"epochs": 99, "cnn_width": 99, "seed": 5})
    assert cfg.epochs == 7  # flag > preset > base
    assert cfg.cnn_width == build_config("quickstart").cnn_width  # preset > base
    assert cfg.seed == 5  # base survives where nothing overrides it


def test_unknown_override_key_is_a_config_error():
    with pytest.raises(ConfigError, match="bogus_flag"):
        build_config(None, {"bogus_flag": 1})


@pytest.mark.parametrize(("text", "expected"), [
    ("64x48", (64, 48)),
    ("96X128", (96, 128)),
    (" 64 x 64 ", (64, 64)),
    ("80", (80, 80)),
    (32, (32, 32)),
    ((48, 64), (48, 64)),
])
def test_img_size_forms(text, expected):
    assert build_config(None, {"img_size": text}).img_size == expected


@pytest.mark.parametrize("text", ["64x", "x48", "64x48x3", "abc", "-64x64", "64.5x64", "8x8", "64x99999", ""])
def test_bad_img_size_is_an_error_naming_the_flag(text):
    with pytest.raises(ConfigError, match="--img-size"):
        build_config(None, {"img_size": text})


@pytest.mark.parametrize(("text", "expected"), [("0,1", (0, 1)), ("3", (3,)), (" 2, 0 ", (2, 0)), (5, (5,))])
def test_classes_forms(text, expected):
    cfg = build_config(None, {"classes": text})
    assert cfg.classes == expected
    assert cfg.num_classes == len(expected)


@pytest.mark.parametrize("text", ["", ",", "a,b", "0,-1", "1,1", "0.5"])
def test_bad_classes_are_an_error_naming_the_flag(text):
    with pytest.raises(ConfigError, match="--classes"):
        build_config(None, {"classes": text})


def test_anchor_string_parsing():
    cfg = RunConfig(anchors="0.08,0.10 0.15,0.20  0.3,0.4")
    assert cfg.anchors == ((0.08, 0.10), (0.15, 0.20), (0.3, 0.4))
    assert RunConfig(anchors=[[0.1, 0.2]]).anchors == ((0.1, 0.2),)  # the YAML list form
    assert RunConfig(anchors="").anchors == ()


@pytest.mark.parametrize("text", ["0.1", "0.1,0.2,0.3", "a,b", "0.1,0.2 0.3"])
def test_bad_anchor_strings(text):
    with pytest.raises(ConfigError, match="--anchors"):
        build_config(None, {"anchors": text})


def test_splits_must_not_exceed_one():
    with pytest.raises(ConfigError, match="train_split \\+ val_split"):
        build_config(None, {"train_split": 0.9, "val_split": 0.2})
    assert build_config(None, {"train_split": 0.9, "val_split": 0.1}).val_split == 0.1


# ------------------------------------------------------------------------------------------------
# features that are not built yet

def test_pending_feature_flag_is_an_error_naming_the_flag(monkeypatch):
    """The mechanism for flags whose feature is not built yet (the table is empty while none is pending)."""
    monkeypatch.setitem(config_module.PENDING_FEATURES, "distill_feat", "a future feature")
    cfg = build_config(None, {"distill_feat": 1.0, "teacher_backbone": "t.pth", "teacher_backbone_arch": "vit_tiny"})
    with pytest.raises(ConfigError) as err:
        check_implemented(cfg)
    assert "--distill-feat needs a future feature, which is not implemented yet" in str(err.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"resume": "a.pt", "ckpt": "b.pt"}, "--resume and --ckpt exclude each other"),
    ({"ckpt_non_strict": True}, "--ckpt-non-strict needs --ckpt"),
    ({"arch": "transformer", "distill_kl": 1.0}, "need --teacher-ckpt"),
    ({"arch": "transformer", "distill_box_l1": 1.0}, "need --teacher-ckpt"),
    ({"teacher_ckpt": "t.pt"}, "use --arch transformer"),
    ({"arch": "transformer", "use_anchor": True, "auto_anchors": True}, "--use-anchor is a CNN head"),
    ({"distill_feat": 1.0}, "--distill-feat needs --teacher-backbone"),
    ({"teacher_backbone": "t.pth"}, "needs --teacher-backbone-arch"),
    ({"arch": "transformer", "teacher_backbone": "t.pth", "teacher_backbone_arch": "vit_tiny"}, "use --arch cnn"),
    ({"arch": "transformer", "teacher_backbone": "t.pth", "teacher_backbone_arch": "vit_tiny", "teacher_ckpt": "x.pt"},
     "one teacher per run"),
])
def test_inconsistent_flags_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_implemented(build_config(None, overrides))


def test_transformer_presets_build_and_are_implemented():
    for name in ("transformer", "transformer_l4"):
        check_implemented(build_config(name))
    assert build_config("transformer_l4").layers == 4
    # the two recipes that start from another checkpoint name what the user must add
    with pytest.raises(ConfigError, match="--ckpt"):
        check_implemented(build_config("transformer_grow"))
    with pytest.raises(ConfigError, match="--teacher-ckpt"):
        check_implemented(build_config("transformer_distill"))


def test_defaults_are_implemented():
    check_implemented(RunConfig())


def test_anchor_head_needs_anchors_or_auto_anchors():
    with pytest.raises(ConfigError, match="--auto-anchors"):
        check_implemented(build_config(None, {"use_anchor": True}))
    check_implemented(build_config(None, {"use_anchor": True, "auto_anchors": True, "iou_loss": "ciou"}))
    check_implemented(build_config(None, {"use_anchor": True, "anchors": "0.1,0.2", "anchor_assign": "yolov5"}))


# ------------------------------------------------------------------------------------------------
# the model itself

def test_run_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.cnn_width = 8  # type: ignore[misc]
    assert cfg.cnn_width == 32


def test_run_config_forbids_unknown_fields():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        RunConfig(cnn_widht=8)  # type: ignore[call-arg]


def test_json_dump_round_trips():
    cfg = build_config("quickstart", {
        "img_size": "48x64", "classes": "3,1", "anchors": "0.1,0.2 0.3,0.4", "teacher_d_model": 128,
        "seed": 7, "lr": 0.0123, "activation": "relu", "output_stride": 4,
    })
    dumped = cfg.model_dump(mode="json")
    text = json.dumps(dumped)  # JSON-safe: no tuples or other Python-only types needed
    again = RunConfig(**json.loads(text))
    assert again == cfg
    assert again.img_size == (48, 64) and again.classes == (3, 1) and again.anchors == ((0.1, 0.2), (0.3, 0.4))
    # and through the config.yaml written into every run dir
    assert RunConfig(**yaml.safe_load(config_to_yaml(cfg))) == cfg


def test_derived_head_name():
    assert RunConfig().head_name == "centernet"
    assert RunConfig(use_anchor=True).head_name == "anchor"
    assert RunConfig(arch="transformer").head_name == "detr"


def test_stored_configs_drop_removed_fields_but_not_unknown_ones():
    from uhd_core.config import stored_config

    old = {**RunConfig().model_dump(mode="json"), "detr_matcher": "greedy"}
    assert build_config(None, base=stored_config(old)) == RunConfig()
    with pytest.raises(ConfigError, match="from-the-future"):
        build_config(None, base=stored_config({**old, "from_the_future": 1}))


# ------------------------------------------------------------------------------------------------
# model families come from the registry (issue 17)

def test_unknown_arch_lists_the_registered_families():
    with pytest.raises(ConfigError, match="--arch: unknown architecture 'vit'; known: cnn, transformer"):
        build_config(None, {"arch": "vit"})


def test_unknown_arch_on_the_command_line_is_one_error_line(tiny_yolo_dir, tmp_path, monkeypatch):
    from uhd_runner import assert_one_error_line, run_uhd

    code, _, err = run_uhd(["train", "--arch", "vit", "--image-dir", tiny_yolo_dir, "--runs-dir", tmp_path / "runs",
                            "--no-tui"], monkeypatch)
    assert code == 2
    assert_one_error_line(err, "--arch: unknown architecture 'vit'; known: cnn, transformer")
    assert not (tmp_path / "runs").exists()


def test_built_in_families_take_no_arch_options(tmp_path):
    assert RunConfig().arch_options == () and build_config(None, {"arch_options": ""}).arch_options == ()
    preset = tmp_path / "p.yaml"
    preset.write_text("arch: transformer\narch_options: {d_model: 32}\n")
    with pytest.raises(ConfigError, match="--arch-options: --arch transformer takes no options"):
        build_config(str(preset))
    with pytest.raises(ConfigError, match="--arch-options: must look like 'key=value,key=value', bad item 'd_model'"):
        build_config(None, {"arch_options": "d_model"})
