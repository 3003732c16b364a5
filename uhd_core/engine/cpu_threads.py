"""How many threads torch may use on the CPU during training (issue 16, finding 12).

torch's OpenMP threads meet at a barrier after every parallel region. A 64x64 detector's step is
thousands of tiny kernels, so when another process takes one of the cores the descheduled thread
holds every barrier until the scheduler gives it back: on 2 cores `make demo` went from 105 s to
39 min. One intra-op thread never waits for a sibling, so a busy core costs at most that core;
the data-loader workers (their own processes, one thread each) still use the other cores for
augmentation. bench/busy_core.py measures the choice idle and with one core busy
(docs/measurements.md).
"""

from __future__ import annotations

import torch


def intra_op_threads(requested: int, device: torch.device) -> int | None:
    """The thread count to set, or None to leave torch's choice.

    ``requested``: the ``--threads`` value; > 0 is taken as is, 0 means automatic: 1 on the CPU
    (the tiny models gain little from a second thread and lose up to 20x on a busy machine), torch's
    own choice on CUDA (the CPU only feeds the GPU there).
    """
    if requested > 0:
        return requested
    return 1 if device.type == "cpu" else None


def apply_intra_op_threads(requested: int, device: torch.device) -> int:
    """Set torch's intra-op thread count for this process; returns the count in force."""
    threads = intra_op_threads(requested, device)
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
