"""Multi-process training on PyTorch's own distributed engine: DistributedDataParallel, started by
torch.distributed's elastic launcher (what `torchrun` runs) or by `torchrun` itself.

One process per device; each trains on its shard of every epoch (``EpochTaggedDistributedSampler``),
DDP averages the gradients, so every rank holds the same weights (and the same EMA, updated on every
rank) after each step. Rank 0 alone writes: run dir, logs, events, checkpoints, renders; it also
evaluates, on the whole val split, so the mAP is the single-process number for those weights.
Backends: NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from uhd_core.errors import ConfigError

#: Set by torchrun and the elastic launcher in every process they start.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job; the default is a plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local rank on CUDA (an explicit cuda:N is the first of this machine's GPUs)."""
        if self.enabled and requested.type == "cuda":
            first = requested.index or 0
            if first + self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"--devices: local rank {self.local_rank} needs cuda:{first + self.local_rank}, "
                                  f"but this machine has {torch.cuda.device_count()} CUDA devices")
            return torch.device("cuda", first + self.local_rank)
        return requested

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_max(self, values: list[float]) -> list[float]:
        """Element-wise max over ranks (flags: any rank asked to stop/save, any rank saw a NaN)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """For parameters outside the DDP module (a distiller's adapter): the mean gradient over ranks."""
        if not self.enabled:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or the elastic launcher) started for a job of > 1 process."""
    return all(name in os.environ for name in LAUNCHER_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def init_process_group(ctx: DistContext, device_type: str) -> None:
    """Join the job (env:// rendezvous from the launcher's variables). NCCL on CUDA, gloo on the CPU."""
    if ctx.enabled and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=ctx.rank,
                                world_size=ctx.world_size)


def close_process_group(synchronize: bool = True) -> None:
    """Leave the job. ``synchronize``: wait for every rank first (rank 0 still saves and evaluates after
    the last step); gloo can abort a process that tears down while a peer is still connected. False
    after an error, where the other ranks may never arrive (the launcher stops them)."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


class EpochTaggedDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (per-epoch reshuffle seeded by (seed, epoch), padded to equal shards),
    yielding ``(index, epoch)`` pairs: the dataset's augmentation randomness is a function of them
    (see CachedDetectionDataset), identical for any number of processes."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((index, self.epoch) for index in super().__iter__())


def launch_local_processes(num_processes: int, entrypoint: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` in ``num_processes`` processes on this machine with torch.distributed's
    elastic launcher, as `torchrun --standalone --nproc-per-node N` would (a local c10d rendezvous on a
    free port). Returns {rank: return value}; a failed process raises the launcher's ChildFailedError.
    ``entrypoint`` must be importable (the processes are spawned)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=f"uhd-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          start_method="spawn")
    return elastic_launch(config, entrypoint)(*args)
