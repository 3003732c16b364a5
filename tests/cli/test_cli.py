"""The `uhd` command through Typer's CliRunner: flags, one-line errors with exit code 2, dataset synth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.config import RunConfig

# Every flag of the original tool's train.py; the port must accept each one (some are still
# "not implemented yet" errors, but never "no such option").
ORIGINAL_TRAIN_FLAGS = """
--arch --image-dir --train-split --val-split --img-size --exp-name --batch-size --epochs --resume --ckpt
--ckpt-non-strict --lr --weight-decay --grad-clip-norm --activation --num-workers --device --seed
--log-interval --eval-interval --conf-thresh --topk --use-amp --use-ema --ema-decay --aug-config --classes
--cnn-width --use-skip --output-stride --use-anchor --anchors --auto-anchors --num-anchors --iou-loss
--last-se --last-width-scale --num-queries --d-model --heads --layers --dim-feedforward --use-fpn
--teacher-ckpt --teacher-arch --teacher-num-queries --teacher-d-model --teacher-heads --teacher-layers
--teacher-dim-feedforward --teacher-use-skip --teacher-activation --teacher-use-fpn --teacher-backbone
--teacher-backbone-arch --distill-kl --distill-box-l1 --distill-temperature --distill-cosine --distill-feat
--preset
""".split()



def test_flag_list_has_no_duplicates():
    assert len(ORIGINAL_TRAIN_FLAGS) == len(set(ORIGINAL_TRAIN_FLAGS)) == 61


def test_train_command_declares_every_original_flag():
    train = typer.main.get_command(app).commands["train"]
    declared = {opt for param in train.params for opt in param.opts}
    missing = [flag for flag in ORIGINAL_TRAIN_FLAGS if flag not in declared]
    assert not missing, f"uhd train lacks: {missing}"


def test_train_help_lists_every_original_flag(runner):
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    missing = [f for f in ORIGINAL_TRAIN_FLAGS if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"not shown in `uhd train --help`: {missing}"


def test_bare_uhd_shows_the_commands(runner):
    result = runner.invoke(app, [])
    assert "train" in result.output and "dataset" in result.output


def test_missing_image_dir_is_one_line_suggesting_synth(runner, tmp_path):
    missing = tmp_path / "no_such_dir"
    result = runner.invoke(app, ["train", "--image-dir", str(missing), "--runs-dir", str(tmp_path / "runs"),
                                 "--epochs", "1"])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert str(missing) in line
    assert "uhd dataset synth" in line


def test_unknown_preset_is_one_line(runner, tmp_path):
    result = runner.invoke(app, ["train", "--preset", "no_such_preset", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "no_such_preset" in line and "quickstart" in line


@pytest.mark.parametrize(("args", "expect"), [
    (["--arch", "transformer", "--distill-kl", "1.0"], "need --teacher-ckpt"),
    (["--preset", "transformer_grow"], "--ckpt-non-strict needs --ckpt"),
    (["--arch", "transformer", "--teacher-ckpt", "missing.pt", "--distill-kl", "1"], "missing.pt: no such checkpoint"),
    (["--ckpt", "nothing.pt"], "--ckpt nothing.pt: no such checkpoint"),
    (["--arch", "transformer", "--d-model", "66"], "divisible by 4"),
    (["--arch", "transformer", "--d-model", "64", "--heads", "3"], "--d-model 64 must be divisible by --heads 3"),
    (["--arch", "transformer", "--use-anchor", "--auto-anchors"], "--use-anchor is a CNN head"),
    (["--preset", "cnn_anchor_dino"], "obtain the official dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    (["--preset", "cnn_anchor_vitt"], "ckpts/vitt_distill.pt: no such file; obtain the official vitt_distill.pt"),
    (["--distill-feat", "1.0"], "--distill-feat needs --teacher-backbone"),
])
def test_recipe_mistakes_are_one_line(runner, tmp_path, tiny_yolo_dir, args, expect):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--image-dir", str(tiny_yolo_dir), "--runs-dir", str(runs), *args])
    assert result.exit_code == 2, result.output
    assert expect in _one_error_line(result)
    assert not runs.exists(), "a rejected config must not create a run dir"


def test_anchor_head_without_anchors_is_one_line(runner, tmp_path, tiny_yolo_dir):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--image-dir", str(tiny_yolo_dir), "--runs-dir", str(runs), "--use-anchor"])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "--use-anchor" in line and "--anchors" in line and "--auto-anchors" in line
    assert not runs.exists(), "a rejected config must not create a run dir"


def test_bad_flag_value_is_one_line_naming_the_flag(runner, tmp_path, tiny_yolo_dir):
    result = runner.invoke(app, ["train", "--image-dir", str(tiny_yolo_dir), "--runs-dir", str(tmp_path),
                                 "--img-size", "64by64"])
    assert result.exit_code == 2
    assert "--img-size" in _one_error_line(result)


def test_existing_run_dir_with_checkpoints_needs_resume_or_exist_ok(runner, tmp_path, tiny_yolo_dir):
    run_dir = tmp_path / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "last_0001.pt").write_bytes(b"not really a checkpoint")
    before = sorted(p.name for p in run_dir.iterdir())
    result = runner.invoke(app, ["train", "--image-dir", str(tiny_yolo_dir), "--runs-dir", str(tmp_path / "runs"),
                                 "--exp-name", "taken", "--epochs", "1"])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert str(run_dir) in line and "--resume" in line and "--exist-ok" in line
    assert sorted(p.name for p in run_dir.iterdir()) == before


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_dataset_synth_writes_n_images_and_refuses_to_overwrite(runner, tmp_path):
    out = tmp_path / "synth"
    result = runner.invoke(app, ["dataset", "synth", str(out), "--n", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.jpg"))) == 5 and len(list(out.glob("*.txt"))) == 5
    assert "5 synthetic images" in result.stdout
    before = _snapshot(out)

    again = runner.invoke(app, ["dataset", "synth", str(out), "--n", "5", "--seed", "4"])
    assert again.exit_code == 2
    assert str(out) in _one_error_line(again)
    assert _snapshot(out) == before


def test_train_end_to_end_prints_the_best_map(runner, tmp_path, tiny_yolo_dir):
    runs = tmp_path / "runs"
    result = runner.invoke(app, [
        "train", "--image-dir", str(tiny_yolo_dir), "--epochs", "1", "--cnn-width", "8", "--batch-size", "16",
        "--num-workers", "0", "--runs-dir", str(runs), "--exp-name", "e2e",
    ])
    assert result.exit_code == 0, result.output
    assert re.search(r"best mAP@0\.5: \d\.\d{5}", result.stdout)
    assert f"run dir: {runs / 'e2e'}" in result.stdout
    assert result.stderr == ""
    run_dir = runs / "e2e"
    assert (run_dir / "config.yaml").is_file() and list(run_dir.glob("last_0001.pt"))
    # only the typed flags overrode the defaults
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["cnn_width"] == 8 and saved["epochs"] == 1 and saved["batch_size"] == 16
    assert saved["lr"] == RunConfig().lr and saved["seed"] == RunConfig().seed and saved["preset"] == ""
