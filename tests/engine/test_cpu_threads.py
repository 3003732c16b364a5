"""Issue 16, finding 12: training picks its torch thread count (1 on the CPU unless --threads says
otherwise). The timing side is bench/busy_core.py (docs/measurements.md), never a timed test."""

from __future__ import annotations

import torch

from uhd_core.engine.cpu_threads import apply_intra_op_threads, intra_op_threads


def test_auto_is_one_thread_on_the_cpu_and_torchs_choice_on_cuda():
    assert intra_op_threads(0, torch.device("cpu")) == 1
    assert intra_op_threads(0, torch.device("cuda", 0)) is None
    assert intra_op_threads(3, torch.device("cpu")) == 3
    assert intra_op_threads(3, torch.device("cuda", 0)) == 3


def test_training_runs_with_the_chosen_thread_count(tiny_yolo_dir, tmp_path):
    from uhd_core.config import build_config
    from uhd_core.engine.trainer import Trainer

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen: list[int] = []
        cfg = build_config(overrides={"image_dir": str(tiny_yolo_dir), "runs_dir": str(tmp_path), "epochs": 1,
                                      "batch_size": 16, "num_workers": 0, "device": "cpu", "cnn_width": 8})
        trainer = Trainer(cfg)
        trainer.bus.subscribe(lambda event: seen.append(torch.get_num_threads()))
        trainer.run()
        assert seen and set(seen) == {1}
        assert apply_intra_op_threads(2, torch.device("cpu")) == 2
    finally:
        torch.set_num_threads(before)
