"""`--extra-train-dir` (training-only folders) and `--min-box-px` (tiny training boxes dropped).

Extra folders give every image to the training split; --image-dir's val split stays its seeded
split, so val numbers stay comparable with and without them. Boxes: cxcywh normalized.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uhd_core.config import build_config
from uhd_core.data.dataset import drop_small_boxes, scan_yolo_folder, split_files
from uhd_core.data.synth import write_synthetic_dataset
from uhd_core.engine.api import run_training
from uhd_core.engine.events import read_events
from uhd_core.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def extra_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small synthetic folders (other seeds than the shared tiny set). Treat as read-only."""
    root = tmp_path_factory.mktemp("extra")
    a, b = root / "extra_a", root / "extra_b"
    write_synthetic_dataset(a, n=12, seed=1)
    write_synthetic_dataset(b, n=8, seed=2)
    return a.resolve(), b.resolve()


def _settings(image_dir: Path, runs: Path, **extra: Any) -> dict[str, Any]:
    return {"image_dir": str(image_dir), "runs_dir": str(runs), "exp_name": "x", "cnn_width": 8, "batch_size": 16,
            "num_workers": 0, "epochs": 1, "seed": 0, "device": "cpu", "log_interval": 1000, **extra}


def _data_event(run_dir: Path) -> dict[str, Any]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "DataPrepared"][-1]


def test_the_flag_takes_commas_and_a_preset_takes_a_list() -> None:
    assert build_config(None, {"extra_train_dirs": "a, b,"}).extra_train_dirs == ("a", "b")
    assert build_config(None, {"extra_train_dirs": ["a", "b"]}).extra_train_dirs == ("a", "b")
    assert build_config(None, {}).extra_train_dirs == () and build_config(None, {}).min_box_px == 0.0
    with pytest.raises(ConfigError, match="--min-box-px"):
        build_config(None, {"min_box_px": -1})


def test_small_boxes_go_by_their_longer_side() -> None:
    boxes = np.array([[0.5, 0.5, 2 / 64, 10 / 64],  # 2x10 px: thin, kept at 4 px
                      [0.5, 0.5, 3 / 64, 3 / 64],  # 3x3 px: dropped
                      [0.5, 0.5, 4 / 64, 1 / 64]], dtype=np.float32)  # exactly 4 px long: kept
    labels = np.array([0, 1, 2])
    kept, kept_labels = drop_small_boxes(boxes, labels, 4.0, (64, 64))
    assert kept_labels.tolist() == [0, 2] and kept.shape == (2, 4)
    assert drop_small_boxes(boxes, labels, 0.0, (64, 64))[1].tolist() == [0, 1, 2]
    # the input size counts: at 32x32 the 2x10 px box (of 64) is 5 px long
    assert drop_small_boxes(boxes, labels, 5.0, (32, 32))[1].tolist() == [0]
    assert drop_small_boxes(boxes, labels, 5.5, (32, 32))[1].tolist() == []


@pytest.fixture(scope="module")
def with_extra(tiny_yolo_dir: Path, extra_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("runs")
    result = run_training(None, _settings(tiny_yolo_dir, runs, extra_train_dirs=",".join(map(str, extra_dirs))),
                          tensorboard=False)
    return result


def test_extra_folders_train_only_and_val_is_unchanged(tiny_yolo_dir: Path, extra_dirs, with_extra) -> None:
    split = json.loads((with_extra.run_dir / "split.json").read_text())
    main = scan_yolo_folder(tiny_yolo_dir, (0,))
    train, val = split_files(main.files, 0.8, 0.2, 0)
    assert split["train"] == train and split["val"] == val  # the seeded split of --image-dir alone
    assert [e["image_dir"] for e in split["extra_train"]] == [str(d) for d in extra_dirs]
    for entry, folder in zip(split["extra_train"], extra_dirs):
        assert entry["files"] == scan_yolo_folder(folder, (0,)).files  # every usable image, training only
    event = _data_event(with_extra.run_dir)
    counts = [(e["num_images"], e["num_train"]) for e in event["extra_dirs"]]
    assert counts == [(len(e["files"]),) * 2 for e in split["extra_train"]]
    assert event["num_train"] == len(train) + sum(c[1] for c in counts) and event["num_val"] == len(val)
    log = (with_extra.run_dir / "train.log").read_text()
    assert f"+ train {counts[0][1]} of {counts[0][0]} in {extra_dirs[0]}" in log


def test_resume_keeps_the_extra_files_of_split_json(tiny_yolo_dir: Path, extra_dirs, with_extra) -> None:
    split_path = with_extra.run_dir / "split.json"
    split = json.loads(split_path.read_text())
    split["extra_train"][0]["files"] = split["extra_train"][0]["files"][:3]
    split_path.write_text(json.dumps(split))
    run_training(None, {"resume": str(with_extra.run_dir), "epochs": 2}, tensorboard=False)
    event = _data_event(with_extra.run_dir)
    assert [e["num_train"] for e in event["extra_dirs"]] == [3, len(split["extra_train"][1]["files"])]
    assert json.loads(split_path.read_text())["extra_train"][0]["files"] == split["extra_train"][0]["files"]


def test_min_box_px_drops_training_boxes_only(tiny_yolo_dir: Path, tmp_path: Path) -> None:
    index = scan_yolo_folder(tiny_yolo_dir, (0,))
    boxes = dict(zip(index.files, index.boxes))
    threshold = float(np.median(np.concatenate([np.maximum(b[:, 2], b[:, 3]) for b in index.boxes]) * 64))
    result = run_training(None, _settings(tiny_yolo_dir, tmp_path, min_box_px=threshold), tensorboard=False)
    split = json.loads((result.run_dir / "split.json").read_text())
    longer = {f: np.maximum(boxes[f][:, 2], boxes[f][:, 3]) * 64 for f in split["train"]}
    small = sum(int((v < threshold).sum()) for v in longer.values())
    emptied = sum(bool((v < threshold).all()) for v in longer.values())
    assert small > 0 and emptied > 0
    event = _data_event(result.run_dir)
    assert (event["num_small_boxes_dropped"], event["num_small_images_dropped"]) == (small, emptied)
    assert event["num_train"] == len(split["train"]) - emptied and event["num_val"] == len(split["val"])
    assert f"--min-box-px {threshold:g} dropped {small} training boxes" in (result.run_dir / "train.log").read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "same_as_image_dir", "twice"])
def test_a_bad_extra_folder_is_one_error_before_anything_is_written(case: str, tiny_yolo_dir: Path,
                                                                   extra_dirs, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    dirs = {"missing": [str(tmp_path / "nope")], "empty": [str(empty)], "same_as_image_dir": [str(tiny_yolo_dir)],
            "twice": [str(extra_dirs[0]), str(extra_dirs[0]) + os.sep]}[case]
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match="--extra-train-dir") as info:
        run_training(None, _settings(tiny_yolo_dir, runs, extra_train_dirs=dirs), tensorboard=False)
    assert "\n" not in str(info.value)
    assert not runs.exists()


def test_each_extra_folder_is_guarded_on_its_own(tiny_yolo_dir: Path, extra_dirs, tmp_path: Path) -> None:
    """A symlink in an extra folder to an image of another folder is refused (named), as in --image-dir."""
    extra = tmp_path / "extra"
    shutil.copytree(extra_dirs[1], extra)
    name = scan_yolo_folder(tiny_yolo_dir, (0,)).files[0]
    (extra / ("zz_" + name)).symlink_to(tiny_yolo_dir / name)
    shutil.copy(tiny_yolo_dir / Path(name).with_suffix(".txt"), extra / ("zz_" + Path(name).stem + ".txt"))
    result = run_training(None, _settings(tiny_yolo_dir, tmp_path / "runs", extra_train_dirs=str(extra)),
                          tensorboard=False)
    event = _data_event(result.run_dir)
    assert event["extra_dirs"][0]["num_decode_failures"] == 1
    assert any(f"zz_{name}" in e and "outside the dataset" in e for e in event["examples"])
    files = json.loads((result.run_dir / "split.json").read_text())["extra_train"][0]["files"]
    assert "zz_" + name not in files


def test_the_cli_flag_repeats_and_a_bad_folder_is_one_line(tiny_yolo_dir: Path, extra_dirs, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from uhd_runner import run_uhd

    runs = tmp_path / "runs"
    base = ["train", "--image-dir", tiny_yolo_dir, "--runs-dir", runs, "--cnn-width", "8", "--epochs", "1",
            "--num-workers", "0", "--device", "cpu", "--no-tui"]
    code, _, err = run_uhd([*base, "--extra-train-dir", extra_dirs[0], "--extra-train-dir", tmp_path / "nope"],
                           monkeypatch)
    assert code == 2 and err.count("\n") == 1 and f"--extra-train-dir {tmp_path / 'nope'}" in err
    assert not runs.exists()
    code, out, err = run_uhd([*base, "--exp-name", "ok", "--extra-train-dir", extra_dirs[0],
                              "--extra-train-dir", extra_dirs[1]], monkeypatch)
    assert code == 0, err
    split = json.loads((runs / "ok" / "split.json").read_text())
    assert [e["image_dir"] for e in split["extra_train"]] == [str(d) for d in extra_dirs]
