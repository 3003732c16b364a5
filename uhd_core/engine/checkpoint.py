"""Moved to the ground floor: ``uhd_core.checkpoint`` (checkpoint file I/O is no engine concern).

Re-exported here only for the trainer's existing import; new code imports ``uhd_core.checkpoint``.
"""

from uhd_core.checkpoint import (  # noqa: F401
    CHECKPOINT_FORMAT,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
