"""Every command given bad input: one `error:` line on stderr, no traceback, the documented exit code.

The contract (uhd_cli/errors.py): exit 2 = the input is unusable, whether the user typed a bad value
or pointed at a file that turns out missing, damaged or of another architecture (every UhdError,
and click's usage errors); exit 1 = the command ran and failed (an unexpected exception, an export
that does not verify, dataset-check finding problems); nothing else ever shows a traceback unless
--debug. Rows run through `uhd_cli.main:main`, the function the installed `uhd` script runs, so
they see exactly what a user sees. No row may leave a file behind.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from cli_helpers import WIDE
from uhd_cli.errors import run_app, set_debug
from uhd_cli.main import app
from uhd_runner import assert_one_error_line as _assert_one_error_line
from uhd_runner import run_uhd



@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]  # {bad} = the shared bad files, {data} = a tiny good dataset, {out} = this row's tmp dir
    expect: str  # a piece of the error line: it must name the flag or the file
    code: int = 2
    click_usage: bool = False  # rejected by click's own parser (--epochs abc), one line through run_app

    def argv(self, paths: dict[str, Path]) -> list[str]:
        return [a.format(**paths) for a in self.args]


def _train(*args: str, expect: str, **kw) -> Row:
    # Every train row points --runs-dir into {out}: failing before training means nothing is written there.
    return Row(("train", "--image-dir", "{data}", "--runs-dir", "{out}/runs", "--epochs", "1", "--num-workers", "0",
                *args), expect, **kw)


ROWS: dict[str, Row] = {
    # ---- train: paths
    "train-image-dir-missing": _train("--image-dir", "{bad}/no_such_dir", expect="no_such_dir does not exist"),
    "train-image-dir-is-a-file": _train("--image-dir", "{bad}/file.txt", expect="is not a folder"),
    "train-image-dir-empty": _train("--image-dir", "{bad}/empty_dir", expect="has no .jpg"),
    "train-runs-dir-is-a-file": _train("--runs-dir", "{bad}/file.txt", expect="not writable"),
    # ---- train: flag values
    "train-img-size-0x64": _train("--img-size", "0x64", expect="--img-size"),
    "train-img-size-65x64-not-a-stride-multiple": _train("--img-size", "65x64", expect="multiples of --output-stride 16"),
    "train-negative-lr": _train("--lr", "-0.01", expect="--lr"),
    "train-negative-epochs": _train("--epochs", "-1", expect="--epochs"),
    "train-negative-batch-size": _train("--batch-size", "-8", expect="--batch-size"),
    "train-classes-not-integers": _train("--classes", "a,b", expect="--classes"),
    "train-anchors-1,2,3": _train("--use-anchor", "--anchors", "1,2,3", expect="--anchors"),
    "train-anchors-outside-0-1": _train("--use-anchor", "--anchors", "2,3", expect="--anchors"),
    "train-device-unknown": _train("--device", "tpu9", expect="--device"),
    "train-epochs-not-a-number": _train("--epochs", "abc", expect="--epochs", click_usage=True),
    "train-unknown-option": _train("--cnn-widht", "8", expect="--cnn-widht", click_usage=True),
    # ---- train: presets and augmentation YAML
    "train-unknown-preset": _train("--preset", "no_such_preset", expect="unknown preset 'no_such_preset'"),
    "train-preset-malformed-yaml": _train("--preset", "{bad}/malformed.yaml", expect="invalid YAML"),
    "train-preset-random-bytes": _train("--preset", "{bad}/random_bytes.yaml", expect="not UTF-8"),
    "train-preset-nested-too-deeply": _train("--preset", "{bad}/deep.yaml", expect="nested too deeply"),
    "train-preset-not-a-mapping": _train("--preset", "{bad}/list.yaml", expect="expected a mapping"),
    "train-preset-unknown-key": _train("--preset", "{bad}/unknown_key.yaml", expect="did you mean 'epochs'"),
    "train-preset-wrong-value-type": _train("--preset", "{bad}/wrong_type.yaml", expect="--epochs"),
    "train-aug-op-wrong-value-type": _train("--aug-config", "{bad}/aug_wrong_type.yaml", expect="hue_gain"),
    "train-aug-malformed-yaml": _train("--aug-config", "{bad}/aug_malformed.yaml", expect="invalid YAML"),
    "train-aug-config-missing": _train("--aug-config", "{bad}/no_such_aug.yaml", expect="not found"),
    # ---- train: checkpoints and teachers
    "train-resume-truncated-checkpoint": _train("--resume", "{bad}/truncated.pt", expect="truncated.pt"),
    "train-ckpt-empty-file": _train("--ckpt", "{bad}/empty.pt", expect="empty.pt"),
    "train-ckpt-wrong-architecture": _train("--ckpt", "{bad}/wrong_arch.pt", expect="wrong_arch.pt"),
    "train-teacher-ckpt-truncated": _train("--arch", "transformer", "--teacher-ckpt", "{bad}/truncated.pt",
                                           "--distill-kl", "1", expect="truncated.pt"),
    "train-teacher-backbone-missing": _train("--teacher-backbone", "{bad}/no_such_teacher.pt",
                                             "--teacher-backbone-arch", "vit_tiny", "--distill-feat", "1",
                                             expect="no_such_teacher.pt"),
    "train-teacher-backbone-not-a-vit": _train("--teacher-backbone", "{bad}/not_a_vit.pt", "--teacher-backbone-arch",
                                               "vit_tiny", "--distill-feat", "1", expect="is not a vit_tiny teacher"),
    "train-teacher-backbone-vits16-as-vit-tiny": _train("--teacher-backbone", "{bad}/vits16.pt",
                                                        "--teacher-backbone-arch", "vit_tiny", "--distill-feat", "1",
                                                        expect="is not a vit_tiny teacher"),
    "train-teacher-img-size-not-patch-multiple": _train("--teacher-backbone", "{bad}/vit_tiny.pt",
                                                        "--teacher-backbone-arch", "vit_tiny", "--distill-feat", "1",
                                                        "--teacher-img-size", "72x72", expect="multiples of 16"),
    # ---- export
    "export-checkpoint-missing": Row(("export", "{bad}/no_such.pt"), "no_such.pt does not exist"),
    "export-checkpoint-is-a-folder": Row(("export", "{bad}"), "is a folder"),
    "export-empty-checkpoint": Row(("export", "{bad}/empty.pt", "--output", "{out}/m.onnx"), "empty.pt"),
    "export-truncated-checkpoint": Row(("export", "{bad}/truncated.pt", "--output", "{out}/m.onnx"), "truncated.pt"),
    "export-wrong-architecture": Row(("export", "{bad}/wrong_arch.pt", "--output", "{out}/m.onnx"), "do not fit"),
    "export-onnx-given-as-checkpoint": Row(("export", "{bad}/random.onnx", "--output", "{out}/m.onnx"),
                                           "random.onnx"),
    "export-img-size-0x64": Row(("export", "{bad}/good.pt", "--img-size", "0x64", "--output", "{out}/m.onnx"),
                                "--img-size"),
    "export-img-size-65x64-not-a-stride-multiple": Row(("export", "{bad}/good.pt", "--img-size", "65x64", "--output",
                                                        "{out}/m.onnx"), "multiples of --output-stride 16"),
    "export-output-is-a-folder": Row(("export", "{bad}/good.pt", "--output", "{out}", "--overwrite"), "is a folder"),
    "export-opset-too-old": Row(("export", "{bad}/good.pt", "--opset", "5"), "--opset", click_usage=True),
    # ---- eval
    "eval-model-missing": Row(("eval", "{bad}/no_such.pt", "--image-dir", "{data}"), "no_such.pt"),
    "eval-model-is-a-folder": Row(("eval", "{bad}", "--image-dir", "{data}"), "is a folder"),
    "eval-truncated-checkpoint": Row(("eval", "{bad}/truncated.pt", "--image-dir", "{data}"), "truncated.pt"),
    "eval-wrong-architecture": Row(("eval", "{bad}/wrong_arch.pt", "--image-dir", "{data}"), "do not fit"),
    "eval-random-bytes-onnx": Row(("eval", "{bad}/random.onnx", "--image-dir", "{data}"), "cannot be read as an ONNX"),
    "eval-truncated-onnx": Row(("eval", "{bad}/truncated.onnx", "--image-dir", "{data}"), "truncated.onnx"),
    "eval-onnx-without-uhd-metadata": Row(("eval", "{bad}/no_metadata.onnx", "--image-dir", "{data}"),
                                          "not a UHD export"),
    "eval-image-dir-missing": Row(("eval", "{bad}/good.pt", "--image-dir", "{bad}/no_such_dir"), "does not exist"),
    "eval-image-dir-is-a-file": Row(("eval", "{bad}/good.pt", "--image-dir", "{bad}/file.txt"), "is not a folder"),
    "eval-no-image-decodes": Row(("eval", "{bad}/good.pt", "--image-dir", "{bad}/undecodable"), "could be decoded"),
    "eval-classes-not-integers": Row(("eval", "{bad}/good.pt", "--image-dir", "{data}", "--classes", "a,b"),
                                     "--classes"),
    "eval-image-dir-not-given": Row(("eval", "{bad}/good.pt"), "--image-dir", click_usage=True),
    # ---- predict
    "predict-model-missing": Row(("predict", "{bad}/no_such.pt", "--source", "{data}", "--out", "{out}/p"),
                                 "no_such.pt"),
    "predict-empty-checkpoint": Row(("predict", "{bad}/empty.pt", "--source", "{data}", "--out", "{out}/p"),
                                    "empty.pt"),
    "predict-random-bytes-onnx": Row(("predict", "{bad}/random.onnx", "--source", "{data}", "--out", "{out}/p"),
                                     "random.onnx"),
    "predict-source-missing": Row(("predict", "{bad}/good.pt", "--source", "{bad}/no_such.jpg", "--out", "{out}/p"),
                                  "does not exist"),
    "predict-video-cannot-be-opened": Row(("predict", "{bad}/good.pt", "--source", "{bad}/garbage.mp4", "--out",
                                           "{out}/p"), "cannot be opened as a video"),
    "predict-image-cannot-be-decoded": Row(("predict", "{bad}/good.pt", "--source", "{bad}/garbage.jpg", "--out",
                                            "{out}/p"), "no readable image"),
    "predict-folder-of-undecodable-images": Row(("predict", "{bad}/good.pt", "--source", "{bad}/undecodable", "--out",
                                                 "{out}/p"), "no readable image"),
    "predict-out-is-a-file": Row(("predict", "{bad}/good.pt", "--source", "{data}", "--out", "{bad}/file.txt"),
                                 "is a file"),
    # ---- bench
    "bench-model-missing": Row(("bench", "{bad}/no_such.onnx"), "no_such.onnx"),
    "bench-model-is-a-folder": Row(("bench", "{bad}"), "is a folder"),
    "bench-empty-onnx": Row(("bench", "{bad}/empty.onnx"), "empty.onnx"),
    "bench-random-bytes-onnx": Row(("bench", "{bad}/random.onnx"), "random.onnx"),
    "bench-truncated-onnx": Row(("bench", "{bad}/truncated.onnx"), "truncated.onnx"),
    "bench-checkpoint-not-onnx": Row(("bench", "{bad}/good.pt"), "good.pt"),
    "bench-threads-zero": Row(("bench", "{bad}/good.onnx", "--threads", "0"), "--threads"),
    "bench-runs-zero": Row(("bench", "{bad}/good.onnx", "--runs", "0"), "--runs", click_usage=True),
    # ---- anchors
    "anchors-image-dir-missing": Row(("anchors", "--auto", "--image-dir", "{bad}/no_such_dir"), "does not exist"),
    "anchors-image-dir-is-a-file": Row(("anchors", "--auto", "--image-dir", "{bad}/file.txt"), "is not a folder"),
    "anchors-1,2,3": Row(("anchors", "--image-dir", "{data}", "--anchors", "1,2,3"), "--anchors"),
    "anchors-negative-side": Row(("anchors", "--image-dir", "{data}", "--anchors", "-0.1,0.2"), "--anchors"),
    "anchors-img-size-0x64": Row(("anchors", "--auto", "--image-dir", "{data}", "--img-size", "0x64"), "--img-size"),
    "anchors-classes-not-integers": Row(("anchors", "--auto", "--image-dir", "{data}", "--classes", "a,b"),
                                        "--classes"),
    "anchors-neither-auto-nor-anchors": Row(("anchors", "--image-dir", "{data}"), "--auto"),
    # ---- dataset-check
    "dataset-check-image-dir-missing": Row(("dataset-check", "--image-dir", "{bad}/no_such_dir"), "does not exist"),
    "dataset-check-image-dir-is-a-file": Row(("dataset-check", "--image-dir", "{bad}/file.txt"), "is not a folder"),
    "dataset-check-img-size-0x64": Row(("dataset-check", "--image-dir", "{data}", "--img-size", "0x64"), "--img-size"),
    "dataset-check-classes-not-integers": Row(("dataset-check", "--image-dir", "{data}", "--classes", "a,b"),
                                              "--classes"),
    "dataset-check-fix-is-a-file": Row(("dataset-check", "--image-dir", "{data}", "--fix", "{bad}/file.txt"),
                                       "is a file"),
    "dataset-check-fix-into-image-dir": Row(("dataset-check", "--image-dir", "{data}", "--fix", "{data}"),
                                            "another folder"),
    # ---- dataset synth
    "synth-out-is-a-file": Row(("dataset", "synth", "{bad}/file.txt", "--n", "2"), "file.txt"),
    "synth-n-zero": Row(("dataset", "synth", "{out}/s", "--n", "0"), "--n", click_usage=True),
    # ---- aug-preview
    "aug-preview-config-missing": Row(("aug-preview", "{bad}/no_such_aug.yaml", "--out", "{out}/a.png"), "not found"),
    "aug-preview-op-wrong-value-type": Row(("aug-preview", "{bad}/aug_wrong_type.yaml", "--out", "{out}/a.png"),
                                           "hue_gain"),
    "aug-preview-op-prob-not-a-number": Row(("aug-preview", "{bad}/aug_wrong_prob.yaml", "--out", "{out}/a.png"),
                                            "HorizontalFlip.prob"),
    "aug-preview-malformed-yaml": Row(("aug-preview", "{bad}/aug_malformed.yaml", "--out", "{out}/a.png"),
                                      "invalid YAML"),
    "aug-preview-yaml-nested-too-deeply": Row(("aug-preview", "{bad}/deep.yaml", "--out", "{out}/a.png"),
                                              "nested too deeply"),
    "aug-preview-random-bytes-yaml": Row(("aug-preview", "{bad}/random_bytes.yaml", "--out", "{out}/a.png"),
                                         "random_bytes.yaml"),
    "aug-preview-image-dir-missing": Row(("aug-preview", "--image-dir", "{bad}/no_such_dir", "--out", "{out}/a.png"),
                                         "does not exist"),
    "aug-preview-image-dir-is-a-file": Row(("aug-preview", "--image-dir", "{bad}/file.txt", "--out", "{out}/a.png"),
                                           "is not a folder"),
    "aug-preview-no-image-decodes": Row(("aug-preview", "--image-dir", "{bad}/undecodable", "--out", "{out}/a.png"),
                                        "could be decoded"),
    "aug-preview-img-size-0x64": Row(("aug-preview", "--image-dir", "{data}", "--img-size", "0x64", "--out",
                                      "{out}/a.png"), "--img-size"),
    "aug-preview-out-is-a-folder": Row(("aug-preview", "--image-dir", "{data}", "--out", "{out}", "--overwrite"),
                                       "is a folder"),
    # ---- dashboard
    "dashboard-run-dir-missing": Row(("dashboard", "{bad}/no_such_run"), "no such run folder"),
    "dashboard-run-dir-is-a-file": Row(("dashboard", "{bad}/file.txt"), "no such run folder"),
    "dashboard-folder-without-events": Row(("dashboard", "{bad}/empty_dir"), "no events.jsonl"),
}


# ------------------------------------------------------------------------------------------------
# shared files, made once per module


def _tiny_checkpoint(path: Path, **overrides) -> None:
    from uhd_core.config import build_config
    from uhd_core.checkpoint import save_checkpoint
    from uhd_core.models.detector import build_detector

    cfg = build_config(None, {"cnn_width": 8, **overrides})
    torch.manual_seed(0)
    model = build_detector(cfg)
    save_checkpoint(path, {"config": cfg.model_dump(mode="json"), "model": model.state_dict(), "ema": None})


def _stub_vit(path: Path, arch: str) -> None:
    """A teacher file with `arch`'s exact key layout; stride-0 views keep it a few KB."""
    from uhd_core.distill.vit import build_vit_teacher

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_vit_teacher(arch).state_dict().items()}
    torch.save({k: torch.zeros(()).expand(s) for k, s in shapes.items()}, path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    import onnx

    from uhd_core.config import build_config
    from uhd_core.data.synth import write_synthetic_dataset
    from uhd_core.export.onnx_export import export_onnx
    from uhd_core.models.detector import build_detector

    root = tmp_path_factory.mktemp("bad_input")
    data = root / "data"
    write_synthetic_dataset(data, n=4, seed=0)
    bad = root / "bad"
    bad.mkdir()
    rng = np.random.default_rng(0)
    (bad / "file.txt").write_text("a file where a folder belongs\n")
    (bad / "empty_dir").mkdir()

    _tiny_checkpoint(bad / "good.pt")
    good = (bad / "good.pt").read_bytes()
    (bad / "truncated.pt").write_bytes(good[: len(good) // 2])
    (bad / "empty.pt").write_bytes(b"")
    # A transformer's config over CNN tensors: loads as a checkpoint, fits no model.
    from uhd_core.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(bad / "good.pt")
    ckpt["config"] = build_config(None, {"arch": "transformer"}).model_dump(mode="json")
    save_checkpoint(bad / "wrong_arch.pt", {k: v for k, v in ckpt.items() if k not in ("format", "uhd_version")})

    cfg = build_config(None, {"cnn_width": 8})
    export_onnx(build_detector(cfg).eval(), cfg, bad / "good.onnx", merge_postprocess=True)
    onnx_bytes = (bad / "good.onnx").read_bytes()
    (bad / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    (bad / "empty.onnx").write_bytes(b"")
    (bad / "random.onnx").write_bytes(rng.bytes(4096))
    model = onnx.load(str(bad / "good.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(bad / "no_metadata.onnx"))

    torch.save({"encoder.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)}, bad / "not_a_vit.pt")
    _stub_vit(bad / "vits16.pt", "dinov3_vits16")
    _stub_vit(bad / "vit_tiny.pt", "vit_tiny")

    (bad / "garbage.mp4").write_bytes(rng.bytes(8192))
    (bad / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(1024))  # a JPEG's magic, then noise
    undecodable = bad / "undecodable"
    undecodable.mkdir()
    for i in range(3):
        (undecodable / f"u{i}.jpg").write_bytes(rng.bytes(2048))
        (undecodable / f"u{i}.txt").write_text("0 0.5 0.5 0.2 0.4\n")

    (bad / "malformed.yaml").write_text("epochs: [1,\n  lr: : :\n")
    (bad / "random_bytes.yaml").write_bytes(b"\xa8" + rng.bytes(512))  # 0xa8 cannot start UTF-8
    (bad / "deep.yaml").write_text("[" * 1000)  # PyYAML recurses per level: ~500 already overflow
    (bad / "list.yaml").write_text("- epochs\n- 3\n")
    (bad / "unknown_key.yaml").write_text("epochz: 3\n")
    (bad / "wrong_type.yaml").write_text("epochs: [1, 2]\n")
    (bad / "aug_wrong_type.yaml").write_text("data_augment:\n  RandomHSV:\n    prob: 0.5\n    hue_gain: strong\n")
    (bad / "aug_wrong_prob.yaml").write_text("data_augment:\n  HorizontalFlip:\n    prob: often\n")
    (bad / "aug_malformed.yaml").write_text("data_augment: [\n  - HorizontalFlip: {prob: \n")
    return {"bad": bad, "data": data}


@pytest.mark.parametrize("row", [pytest.param(r, id=n) for n, r in ROWS.items()])
def test_bad_input_is_one_error_line(row: Row, paths, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    code, _, stderr = run_uhd(row.argv({**paths, "out": out}), monkeypatch)
    _assert_one_error_line(stderr, row.expect)
    assert code == row.code, f"exit code {code}, expected {row.code}: {stderr}"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not written, f"a rejected command wrote {written}"


def _command_names(group, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        sub = getattr(command, "commands", None)
        names |= _command_names(command, f"{prefix}{name} ") if sub else {prefix + name}
    return names


def test_table_covers_every_command():
    # A new command fails this until it has bad-input rows.
    covered = {" ".join(row.args[:2]) if row.args[0] == "dataset" else row.args[0] for row in ROWS.values()}
    assert covered == _command_names(typer.main.get_command(app))


# ------------------------------------------------------------------------------------------------
# click's usage errors through run_app (what main() should call), the catch-all and --debug


@pytest.mark.parametrize("row", [pytest.param(r, id=n) for n, r in ROWS.items() if r.click_usage])
def test_run_app_turns_click_usage_errors_into_one_line(row: Row, paths, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    with CliRunner(env=WIDE).isolation() as (_, err, _):
        with pytest.raises(SystemExit) as exc:
            run_app(app, "uhd", row.argv({**paths, "out": out}))
        sys.stderr.flush()
        stderr = err.getvalue().decode()
    line = _assert_one_error_line(stderr, row.expect)
    assert exc.value.code == 2
    assert f"uhd {row.args[0]}" in line  # points at the right --help


def _break_export(monkeypatch):
    from uhd_core.export import api

    def boom(*args, **kwargs):
        raise RuntimeError("something nobody anticipated\nwith a second line")

    monkeypatch.setattr(api, "export_checkpoint", boom)


def test_an_unexpected_exception_is_one_line_exit_1(paths, monkeypatch):
    _break_export(monkeypatch)
    code, _, stderr = run_uhd(["export", str(paths["bad"] / "good.pt")], monkeypatch)
    line = _assert_one_error_line(stderr, "unexpected RuntimeError: something nobody anticipated")
    assert code == 1 and "--debug" in line


def test_uhd_debug_env_shows_the_traceback(paths, monkeypatch):
    monkeypatch.setenv("UHD_DEBUG", "1")
    code, _, stderr = run_uhd(["export", str(paths["bad"] / "empty.pt")], monkeypatch)
    assert code == 1 and "Traceback" in stderr and "CheckpointError" in stderr
    _break_export(monkeypatch)
    code, _, stderr = run_uhd(["export", str(paths["bad"] / "good.pt")], monkeypatch)
    assert code == 1 and "Traceback" in stderr and "something nobody anticipated" in stderr


@pytest.fixture
def debug_reset():
    yield
    set_debug(False)  # in-process: a --debug run must not leak into later tests


def test_debug_flag_shows_the_traceback(paths, monkeypatch, debug_reset):
    code, _, stderr = run_uhd(["--debug", "export", str(paths["bad"] / "empty.pt")], monkeypatch)
    assert code == 1 and "Traceback" in stderr and "CheckpointError" in stderr
