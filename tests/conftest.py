"""Shared fixtures: tiny synthetic data made once per session, and isolation from the user's cache.

Tests never change the working directory: every path they hand to uhd_core or the CLI is absolute
(a tmp dir), so nothing is written into the checkout however pytest is started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The models under test are tiny (hundreds to thousands of parameters): one intra-op thread is
# faster than two, and OpenMP's barrier spinning makes a 2-thread step up to ~200x slower when the
# other core is busy (a concurrent build or training run). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Size of the shared synthetic YOLO folder (about 5% of synthetic images hold no person).
TINY_N = 48
TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_yolo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic YOLO folder (TINY_N .jpg + .txt pairs, class 0 = person). Treat as read-only."""
    from uhd_core.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny_yolo") / "images"
    report = write_synthetic_dataset(out, n=TINY_N, seed=TINY_SEED)
    assert report.num_images == TINY_N
    return out.resolve()


@pytest.fixture(autouse=True)
def uhd_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty decode cache, never ~/.cache/uhd."""
    cache = tmp_path_factory.mktemp("uhd_cache")
    monkeypatch.setenv("UHD_CACHE_DIR", str(cache))
    return cache
