"""Nothing the user owns is destroyed by a writer, and every writer fails in one line (issue 16).

- the output rule (``uhd_core.outputs``): an output is never an input, never inside an input
  dataset, never a folder holding an input (symlinks resolved), not even with ``--overwrite``; an
  existing file needs ``--overwrite``; a read-only target fails before the work;
- ``--json`` of eval/predict/bench/anchors and ``--out/--output`` of predict/export/aug-preview
  follow it (finding 2);
- ``uhd predict`` on non-UTF-8 file names (finding 1: ``cv2.imwrite`` crashed the process);
- export: non-finite outputs fail verification (6), the final name appears only once verified (7a);
- disk full / read-only disk and damaged or foreign ONNX files are one line naming the file (11).

Tests run as root, where ``chmod`` does not stop a write (and ``os.access`` says writable), so a
read-only folder is simulated by monkeypatching ``outputs._read_only_fs``, and a full disk by an
``os.replace`` that raises ENOSPC for the output's name only.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from uhd_core import outputs
from uhd_core.errors import OutputError
from uhd_runner import assert_one_error_line, run_uhd


# ------------------------------------------------------------------------------------------------
# fixtures: a tiny checkpoint (untrained; boxes exist), its merged export, a small dataset


def _checkpoint(path: Path, *, nan: bool = False, **overrides) -> Path:
    from uhd_core.config import build_config
    from uhd_core.checkpoint import save_checkpoint
    from uhd_core.models.detector import build_detector

    cfg = build_config(None, {"cnn_width": 8, "image_dir": str(path.parent / "no_such_data"), **overrides})
    torch.manual_seed(0)
    model = build_detector(cfg)
    with torch.no_grad():
        model.head.wh.weight.zero_()
        model.head.wh.bias.fill_(2.0)
        if nan:
            for p in model.parameters():
                p.fill_(float("nan"))
    save_checkpoint(path, {"config": cfg.model_dump(mode="json"), "model": model.state_dict(), "ema": None})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from uhd_core.data.synth import write_synthetic_dataset
    from uhd_core.export.api import export_checkpoint

    root = tmp_path_factory.mktemp("output_safety")
    data = root / "data"
    write_synthetic_dataset(data, n=4, seed=0)
    ckpt = _checkpoint(root / "m.pt")
    onnx_path = export_checkpoint(ckpt, root / "m.onnx", merge_postprocess=True, latency=False).path
    raw = export_checkpoint(ckpt, root / "raw.onnx", latency=False).path
    two_class = export_checkpoint(_checkpoint(root / "two.pt", classes="0,1"), root / "two.onnx", latency=False).path
    return {"root": root, "data": data, "ckpt": ckpt, "onnx": onnx_path, "raw": raw, "two_class": two_class}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# the rule itself (uhd_core.outputs)


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is the input"):
            outputs.check_output_file(model, flag="--json", overwrite=overwrite, inputs=[model])
    assert model.read_bytes() == b"model"


def test_an_output_inside_an_input_dataset_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    with pytest.raises(OutputError, match="inside the input dataset"):
        outputs.check_output_file(data / "sub" / "new.json", flag="--json", overwrite=True, input_dirs=[data])
    with pytest.raises(OutputError, match="inside the input folder"):
        outputs.check_output_dir(data / "pred", flag="--out", overwrite=True, inputs=[data])


def test_an_output_folder_that_contains_an_input_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.write_bytes(b"ckpt")
    with pytest.raises(OutputError, match="contains the input"):
        outputs.check_output_dir(tmp_path / "run", flag="--out", overwrite=True, inputs=[ckpt])
    with pytest.raises(OutputError, match="contains the input dataset"):
        outputs.check_output_dir(tmp_path, flag="--out", overwrite=True, input_dirs=[tmp_path / "run"])


def test_a_symlink_to_an_input_is_the_input(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"ckpt")
    (tmp_path / "link.json").symlink_to(model)
    with pytest.raises(OutputError, match="is the input"):
        outputs.check_output_file(tmp_path / "link.json", flag="--json", overwrite=True, inputs=[model])
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)  # the same file through a folder link
    with pytest.raises(OutputError, match="is the input"):
        outputs.check_output_file(tmp_path / "alias" / "m.pt", flag="--output", overwrite=True, inputs=[model])


def test_an_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(OutputError, match="--overwrite"):
        outputs.check_output_file(out, flag="--json")
    assert outputs.check_output_file(out, flag="--json", overwrite=True) == out
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match="--overwrite"):
        outputs.check_output_dir(tmp_path / "o", flag="--out")
    assert outputs.check_output_file(tmp_path / "new" / "r.json", flag="--json") == tmp_path / "new" / "r.json"


def test_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_read_only_fs", lambda folder: True)
    with pytest.raises(OutputError, match="read-only"):
        outputs.check_output_file(tmp_path / "r.json", flag="--json")


def test_write_output_turns_a_full_disk_into_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    out.write_text("old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match="r.json: no space left"):
        outputs.write_output(out, "new", "--json")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_write_image_writes_a_non_utf8_name(tmp_path):
    name = os.fsdecode(b"\x82\xa0.jpg")  # Shift-JIS, as a surrogate-escaped str
    image = np.full((8, 8, 3), 200, np.uint8)
    outputs.write_image(tmp_path / name, image)
    assert os.listdir(os.fsencode(tmp_path)) == [b"\x82\xa0.jpg"]
    assert cv2.imdecode(np.fromfile(tmp_path / name, np.uint8), cv2.IMREAD_COLOR).shape == (8, 8, 3)


# ------------------------------------------------------------------------------------------------
# finding 2: no command destroys one of its inputs or an existing file


def _cases(f: dict[str, Path]) -> dict[str, tuple[list, Path]]:
    """name -> (argv, the file that must survive)."""
    image = sorted(f["data"].glob("*.jpg"))[0]
    return {
        "eval-json-is-the-model": (["eval", f["onnx"], "--image-dir", f["data"], "--json", f["onnx"], "--overwrite"],
                                   f["onnx"]),
        "eval-json-in-the-dataset": (["eval", f["ckpt"], "--image-dir", f["data"], "--json", f["data"] / "e.json"],
                                     f["data"]),
        "predict-json-is-a-dataset-image": (["predict", f["ckpt"], "--source", f["data"], "--out", f["root"] / "p1",
                                             "--json", image, "--overwrite"], image),
        "predict-out-is-the-source": (["predict", f["ckpt"], "--source", f["data"], "--out", f["data"], "--overwrite"],
                                      f["data"]),
        "bench-json-is-a-checkpoint": (["bench", f["onnx"], "--runs", "1", "--json", f["ckpt"]], f["ckpt"]),
        "bench-json-is-the-model": (["bench", f["onnx"], "--runs", "1", "--json", f["onnx"], "--overwrite"], f["onnx"]),
        "anchors-json-is-a-label": (["anchors", "--image-dir", f["data"], "--auto", "--evolve", "0", "--num-anchors", "2", "--json",
                                     image.with_suffix(".txt"), "--overwrite"], image.with_suffix(".txt")),
        "export-output-is-the-checkpoint": (["export", f["ckpt"], "--output", f["ckpt"], "--overwrite"], f["ckpt"]),
        "aug-preview-out-in-the-dataset": (["aug-preview", "--image-dir", f["data"], "--n", "1", "--variants", "1",
                                            "--out", image, "--overwrite"], image),
    }


CASE_NAMES = ["eval-json-is-the-model", "eval-json-in-the-dataset", "predict-json-is-a-dataset-image",
              "predict-out-is-the-source", "bench-json-is-a-checkpoint", "bench-json-is-the-model",
              "anchors-json-is-a-label", "export-output-is-the-checkpoint", "aug-preview-out-in-the-dataset"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_no_command_writes_over_its_input(files, case, monkeypatch):
    argv, keep = _cases(files)[case]
    before = _snapshot(keep) if keep.is_dir() else {keep.name: keep.read_bytes()}
    code, _, stderr = run_uhd(argv, monkeypatch)
    assert code == 2, stderr[-2000:]
    line = assert_one_error_line(stderr)
    if case == "bench-json-is-a-checkpoint":  # not an input of bench: an existing file, so --overwrite
        assert "exists; pass --overwrite" in line, line
    else:
        assert "input" in line and "not even with --overwrite" in line, line
    assert (_snapshot(keep) if keep.is_dir() else {keep.name: keep.read_bytes()}) == before


@pytest.mark.parametrize("command", ["eval", "bench", "anchors", "predict"])
def test_an_existing_json_needs_overwrite(files, command, tmp_path, monkeypatch):
    js = tmp_path / "report.json"
    js.write_text("mine")
    argv = {"eval": ["eval", files["onnx"], "--image-dir", files["data"]],
            "bench": ["bench", files["onnx"], "--runs", "1"],
            "anchors": ["anchors", "--image-dir", files["data"], "--auto", "--evolve", "0", "--num-anchors", "2"],
            "predict": ["predict", files["ckpt"], "--source", files["data"], "--out", tmp_path / "p"]}[command]
    code, _, stderr = run_uhd([*argv, "--json", js], monkeypatch)
    assert code == 2 and "--overwrite" in assert_one_error_line(stderr, "report.json")
    assert js.read_text() == "mine"
    code, _, stderr = run_uhd([*argv, "--json", js, "--overwrite"], monkeypatch)
    assert code == 0, stderr[-2000:]
    assert json.loads(js.read_text())


def test_eval_checks_a_read_only_json_target_before_evaluating(files, tmp_path, monkeypatch):
    import uhd_core.evaluation as model_eval

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated before --json was checked")

    monkeypatch.setattr(model_eval, "evaluate_model", must_not_run)
    monkeypatch.setattr(outputs, "_read_only_fs", lambda folder: Path(folder) == tmp_path)
    code, _, stderr = run_uhd(["eval", files["onnx"], "--image-dir", files["data"], "--json", tmp_path / "e.json"],
                              monkeypatch)
    assert code == 2 and "read-only" in assert_one_error_line(stderr, "e.json")


# ------------------------------------------------------------------------------------------------
# finding 11: a full or read-only disk during the write is one line naming the file


def _full_disk_at(monkeypatch, name: str, err: int) -> None:
    """os.replace raises ``err`` whenever it would create a file called ``name`` (a temp rename)."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError(err, os.strerror(err))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


WRITERS = {
    "export": (["export", "{ckpt}", "--output", "{out}/w.onnx"], "w.onnx"),
    "predict-image": (["predict", "{ckpt}", "--source", "{data}", "--out", "{out}/p"], "{first_image}"),
    "predict-json": (["predict", "{ckpt}", "--source", "{data}", "--out", "{out}/p", "--json", "{out}/w.json"],
                     "w.json"),
    "eval-json": (["eval", "{onnx}", "--image-dir", "{data}", "--json", "{out}/w.json"], "w.json"),
    "bench-json": (["bench", "{onnx}", "--runs", "1", "--json", "{out}/w.json"], "w.json"),
    "anchors-json": (["anchors", "--image-dir", "{data}", "--auto", "--evolve", "0", "--num-anchors", "2", "--json", "{out}/w.json"],
                     "w.json"),
    "aug-preview": (["aug-preview", "--image-dir", "{data}", "--n", "1", "--variants", "1", "--out", "{out}/w.png"],
                    "w.png"),
}


@pytest.mark.parametrize("err, advice", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_failing_write_is_one_line_naming_the_file(files, writer, err, advice, tmp_path, monkeypatch):
    argv, name = WRITERS[writer]
    values = {"ckpt": files["ckpt"], "onnx": files["onnx"], "data": files["data"], "out": tmp_path,
              "first_image": sorted(files["data"].glob("*.jpg"))[0].name}
    _full_disk_at(monkeypatch, name.format(**values), err)
    code, _, stderr = run_uhd([a.format(**values) for a in argv], monkeypatch)
    assert code == 2, stderr[-2000:]
    line = assert_one_error_line(stderr, name.format(**values))
    assert advice in line and "unexpected" not in line, line
    assert not [p for p in tmp_path.rglob("*") if p.name == name.format(**values)]


# ------------------------------------------------------------------------------------------------
# finding 1: non-UTF-8 file names (a subprocess: the old code killed the interpreter with SIGSEGV)


def _write_video(path_bytes: bytes, frames: int = 3) -> None:
    ascii_tmp = os.path.dirname(path_bytes) + b"/ascii_tmp.mp4"
    writer = cv2.VideoWriter(os.fsdecode(ascii_tmp), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    os.rename(ascii_tmp, path_bytes)


@pytest.mark.parametrize("kind", ["folder", "video"])
def test_predict_handles_non_utf8_file_names(files, kind, tmp_path):
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    name = b"\x82\xa0"  # Shift-JIS for a hiragana letter: not valid UTF-8
    if kind == "folder":
        image = sorted(files["data"].glob("*.jpg"))[0].read_bytes()
        with open(src + b"/" + name + b".jpg", "wb") as fh:
            fh.write(image)
        source, expected = src, name + b".jpg"
    else:
        source = src + b"/" + name + b".mp4"
        _write_video(source)
        expected = name + b"_pred.mp4"
    out = os.fsencode(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "uhd_cli", "predict", os.fsencode(files["ckpt"]), "--source", source,
                           "--out", out, "--json", out + b".json", "--save-txt", "--conf-thresh", "0"],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert expected in os.listdir(out)
    records = json.loads(open(out + b".json", "rb").read())["images"]
    assert len(records) == (1 if kind == "folder" else 3)
    if kind == "folder":
        written = np.fromfile(os.fsdecode(out + b"/" + expected), np.uint8)
        assert cv2.imdecode(written, cv2.IMREAD_COLOR).shape[:2] == (records[0]["height"], records[0]["width"])
        assert os.listdir(out + b"/labels") == [name + b".txt"]
    else:
        os.rename(out + b"/" + expected, out + b"/moved.mp4")
        cap = cv2.VideoCapture(os.fsdecode(out + b"/moved.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
        cap.release()
    assert not [n for n in os.listdir(out) if n.endswith(b".tmp") or b".tmp." in n]


# ------------------------------------------------------------------------------------------------
# findings 6 and 7a: export verifies before the final name exists, and NaN is not "no difference"


def test_a_nan_checkpoint_does_not_export_as_verified(tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "nan.pt", nan=True)
    out = tmp_path / "nan.onnx"
    code, stdout, stderr = run_uhd(["export", ckpt, "--output", out], monkeypatch)
    assert code == 1, stdout[-2000:] + stderr[-2000:]
    line = assert_one_error_line(stderr, "not finite")
    assert "nan.pt" in line and "nan.onnx.unverified" in line, line
    assert "verified:" not in stdout
    assert not out.exists() and (tmp_path / "nan.onnx.unverified").is_file()


def test_verify_onnx_reports_non_finite_outputs_as_nan(files, tmp_path):
    from uhd_core.export.onnx_export import verify_onnx
    from uhd_core.inference import load_predictor

    model = load_predictor(files["ckpt"]).model
    with torch.no_grad():
        model.head.hm.bias.fill_(float("nan"))  # PyTorch side non-finite, the ONNX file finite
    diffs = verify_onnx(model, files["raw"], [torch.rand(1, 3, 64, 64)])
    assert np.isnan(diffs["hm"]) and not all(d <= 1e-4 for d in diffs.values())


def test_export_verifies_under_a_temp_name_and_a_kill_leaves_no_final_file(files, tmp_path, monkeypatch):
    import uhd_core.export.api as api

    out = tmp_path / "k.onnx"
    seen = []

    def killed_during_verification(model, path, inputs, tol):
        seen.append((Path(path), out.exists()))
        raise KeyboardInterrupt  # stands in for a kill between write and verify

    monkeypatch.setattr(api, "verify_onnx", killed_during_verification)
    with pytest.raises(KeyboardInterrupt):
        api.export_checkpoint(files["ckpt"], out, latency=False)
    (verified_path, final_existed), = seen
    assert verified_path != out and verified_path.parent == out.parent
    assert not final_existed and not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is gone too


def test_a_failed_verification_keeps_the_previous_export(files, tmp_path, monkeypatch):
    import uhd_core.export.api as api

    out = tmp_path / "m.onnx"
    out.write_bytes(files["onnx"].read_bytes())
    monkeypatch.setattr(api, "verify_onnx", lambda *a, **k: {"detections": 0.5})
    code, _, stderr = run_uhd(["export", files["ckpt"], "--output", out, "--merge-postprocess", "--overwrite"],
                              monkeypatch)
    assert code == 1 and "differ" in assert_one_error_line(stderr, "m.onnx.unverified")
    assert out.read_bytes() == files["onnx"].read_bytes()


# ------------------------------------------------------------------------------------------------
# finding 11: damaged, empty and foreign ONNX files


def _edited(src: Path, dst: Path, **props: str) -> Path:
    model = onnx.load(str(src))
    values = {p.key: p.value for p in model.metadata_props}
    values.update(props)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(dst))
    return dst


def _bad_onnx(files: dict[str, Path], tmp_path: Path, kind: str) -> Path:
    if kind == "empty":
        (tmp_path / "bad.onnx").write_bytes(b"")
        return tmp_path / "bad.onnx"
    if kind == "config-not-json":
        return _edited(files["onnx"], tmp_path / "bad.onnx", uhd_config="{not json")
    if kind == "config-not-a-config":
        return _edited(files["onnx"], tmp_path / "bad.onnx", uhd_config=json.dumps({"cnn_width": "wide"}))
    if kind == "img-size-not-the-graph's":
        pre = json.loads({p.key: p.value for p in onnx.load(str(files["onnx"])).metadata_props}["uhd_preprocess"])
        return _edited(files["onnx"], tmp_path / "bad.onnx", uhd_preprocess=json.dumps({**pre, "img_size": [96, 96]}))
    if kind == "another-model's-metadata":  # the 1-class model's metadata on a 2-class graph
        props = {p.key: p.value for p in onnx.load(str(files["raw"])).metadata_props if p.key.startswith("uhd_")}
        return _edited(files["two_class"], tmp_path / "bad.onnx", **props)
    raise AssertionError(kind)


BAD_ONNX = {"empty": "is empty (0 bytes)", "config-not-json": "uhd_config metadata is damaged",
            "config-not-a-config": "not a valid UHD config", "img-size-not-the-graph's": "says img_size 96x96",
            "another-model's-metadata": "copied from another model"}


#: bench times the graph and never builds the model uhd_config describes: it is not asked to judge that config
LOADERS = [(command, kind) for command in ("eval", "predict", "bench") for kind in BAD_ONNX
           if not (command == "bench" and kind in ("config-not-a-config", "another-model's-metadata"))]


@pytest.mark.parametrize("command, kind", LOADERS)
def test_a_damaged_or_foreign_onnx_is_one_line_naming_the_file(files, kind, command, tmp_path, monkeypatch):
    bad = _bad_onnx(files, tmp_path, kind)
    argv = {"eval": ["eval", bad, "--image-dir", files["data"]],
            "predict": ["predict", bad, "--source", files["data"], "--out", tmp_path / "p"],
            "bench": ["bench", bad, "--runs", "1"]}[command]
    code, _, stderr = run_uhd(argv, monkeypatch)
    assert code == 2, stderr[-2000:]
    line = assert_one_error_line(stderr, "bad.onnx")
    assert BAD_ONNX[kind] in line and "uhd export" in line, line
