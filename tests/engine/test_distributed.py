"""DDP on the CPU (gloo): a real 2-process `uhd train`, and one step of 2 x batch 8 == 1 x batch 16."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from uhd_core.checkpoint import load_checkpoint
from uhd_core.config import build_config
from uhd_core.engine.distributed import DistContext, EpochTaggedDistributedSampler, close_process_group
from uhd_core.engine.events import read_events
from uhd_core.engine.train_state import ForwardWithFeatures
from uhd_core.export.api import export_checkpoint
from uhd_core.models.detector import build_detector

BATCH = 16


def test_two_processes_train_and_the_checkpoint_loads_and_exports(tiny_yolo_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "uhd_cli", "train", "--preset", "quickstart", "--devices", "2", "--device", "cpu",
         "--image-dir", str(tiny_yolo_dir), "--runs-dir", str(tmp_path), "--exp-name", "ddp", "--epochs", "2",
         "--batch-size", "8", "--eval-interval", "1", "--num-workers", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("best mAP@0.5:") == 1  # rank 0 alone reports
    assert proc.stdout.count("next: uhd export") == 1
    run_dir = tmp_path / "ddp"
    # the launcher's check let go of the run dir's lock for rank 0, which released it at the end
    assert not (run_dir / ".lock").exists()
    events = read_events(run_dir / "events.jsonl")
    (started,) = [e for e in events if e["event"] == "RunStarted"]
    assert started["world_size"] == 2
    assert len([e for e in events if e["event"] == "EvalFinished"]) == 2  # one writer: rank 0's
    ckpt = load_checkpoint(run_dir / "last_0002.pt")
    assert ckpt["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])
    result = export_checkpoint(run_dir / "last_0002.pt", tmp_path / "ddp.onnx", latency=False)
    assert result.verified and result.path == tmp_path / "ddp.onnx"


def test_shards_cover_every_item_once_per_epoch_and_reshuffle():
    shards = [EpochTaggedDistributedSampler(range(10), num_replicas=2, rank=r, shuffle=True, seed=3) for r in (0, 1)]
    orders = []
    for epoch in (1, 2):
        for s in shards:
            s.set_epoch(epoch)
        items = [pair for s in shards for pair in s]
        assert sorted(i for i, _ in items) == list(range(10)) and {e for _, e in items} == {epoch}
        orders.append([i for i, _ in items])
    assert orders[0] != orders[1]


# ------------------------------------------------------------------------------------------------
# one step: DDP 2 x 8 vs one process x 16

def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16 images with exactly one box each: every rank's loss normalizer (its number of boxes) is the
    same, so the mean of the two half-batch losses is the full-batch loss, as DDP's averaging assumes."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, 64, 64, generator=gen)
    centers = 0.25 + 0.5 * torch.rand(BATCH, 1, 2, generator=gen)
    sizes = 0.1 + 0.3 * torch.rand(BATCH, 1, 2, generator=gen)
    return images, torch.cat([centers, sizes], dim=2), torch.zeros(BATCH, 1, dtype=torch.long)


def _model():
    torch.manual_seed(0)
    model = build_detector(build_config("quickstart", {"image_dir": "unused"}))
    return model.eval()  # BatchNorm eval-style: per-rank batch statistics would differ from the big batch's


def _gradients(model, images, boxes, labels, forward) -> dict[str, torch.Tensor]:
    outputs, _ = forward(images)
    targets = model.head.build_targets(boxes, labels, model.head.output_hw(outputs))
    model.head.loss(outputs, targets)["loss"].backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _ddp_rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = _model()
    images, boxes, labels = _batch()
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    ddp = DistributedDataParallel(ForwardWithFeatures(model))
    grads = _gradients(model, images[half], boxes[half], labels[half], ddp)
    if rank == 0:
        torch.save(grads, out)
    close_process_group()  # together: a rank tearing down gloo while its peer is connected can abort


def test_ddp_gradients_of_2_x_8_equal_one_process_of_16(tmp_path):
    out = tmp_path / "ddp_grads.pt"
    # spawn, not fork: forking the multi-threaded pytest process can deadlock a child on a held lock
    mp.start_processes(_ddp_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2, start_method="spawn")
    ddp = torch.load(out, weights_only=True)
    model = _model()
    single = _gradients(model, *_batch(), model.forward_with_features)
    assert ddp.keys() == single.keys() and len(single) > 10
    for name, grad in single.items():
        torch.testing.assert_close(ddp[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_single_process_context_does_nothing_collective():
    ctx = DistContext()
    assert not ctx.enabled and ctx.is_main
    assert ctx.all_max([0.0, 1.0]) == [0.0, 1.0]
    ctx.barrier()  # no process group: must not raise


def test_sync_bn_without_cuda_is_a_config_error(tiny_yolo_dir, tmp_path):
    from uhd_core.engine.api import create_trainer
    from uhd_core.errors import ConfigError

    with pytest.raises(ConfigError, match="--sync-bn"):
        create_trainer(None, {"image_dir": str(tiny_yolo_dir), "runs_dir": str(tmp_path), "device": "cpu",
                              "sync_bn": True, "devices": 2})
    assert not any(Path(tmp_path).iterdir())


def test_ctrl_c_stops_every_process_after_its_step_with_a_last_checkpoint(tiny_yolo_dir, tmp_path):
    import signal
    import time

    run_dir = tmp_path / "ddp"
    proc = subprocess.Popen(
        [sys.executable, "-m", "uhd_cli", "train", "--preset", "quickstart", "--devices", "2", "--device", "cpu",
         "--image-dir", str(tiny_yolo_dir), "--runs-dir", str(tmp_path), "--exp-name", "ddp", "--epochs", "500",
         "--batch-size", "8", "--num-workers", "0", "--log-interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "CI": "1"})
    deadline = time.monotonic() + 120
    while not (run_dir / "events.jsonl").is_file() or '"StepEnded"' not in (run_dir / "events.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the launcher and both processes
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "continue with: uhd train --resume" in out, out
    (finished,) = [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "RunFinished"]
    assert finished["stopped_early"] and finished["epochs_done"] < 500
    last = load_checkpoint(finished["last_checkpoint"])
    assert last["world_size"] == 2 and last["epoch"] == finished["epochs_done"]
    for path in run_dir.glob("*.pt"):
        load_checkpoint(path)
