"""One training process per run dir: an exclusive ``flock`` on ``<run dir>/.lock``.

Two `uhd train` runs writing the same run dir interleave events.jsonl and train.log and prune each
other's checkpoints; a resume of a run that is still training does the same. The lock makes the
second one refuse before it writes anything.

Why flock: the kernel drops the lock when the holding process exits *or dies* (kill -9, OOM
killer, power loss of a network client aside), so a lock left by a dead run never needs to be
detected or cleaned up: the next run simply gets it. The file holds the holder's pid only so that the
refusal can name it. flock is advisory and per open file description: it stops other UHD runs, not
other programs, and on some network file systems (old NFS) it may be local to one machine.

In a multi-process (DDP) job only rank 0 writes the run dir, so only rank 0 takes the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from uhd_core.errors import RunDirError, bounded
from uhd_core.outputs import describe_os_error

LOCK_NAME = ".lock"


def lock_holder_pid(run_dir: Path) -> int | None:
    """The pid written in ``run_dir``'s lock file (the last holder's; None when unreadable)."""
    try:
        return int((Path(run_dir) / LOCK_NAME).read_text(encoding="ascii").strip() or "x")
    except (OSError, ValueError):
        return None


class RunDirLock:
    """An exclusive, non-blocking lock on a run dir, held until ``release()`` or process exit.

    ``RunDirLock(run_dir).acquire()`` raises ``RunDirError`` (one line: the run dir and the pid of
    the process holding it) when another process holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunDirLock:
        if self._fd is not None:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RunDirError(describe_os_error(exc, self.run_dir, "cannot lock run dir")) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirError(describe_os_error(exc, self.path, "cannot lock")) from None
                pid = lock_holder_pid(self.run_dir)
                holder = f"process {pid}" if pid else "another process"
                raise RunDirError(
                    f"run dir {bounded(self.run_dir)} is in use by {holder} (another uhd train); wait for it to "
                    "finish or stop it, or choose another --exp-name") from None
            # A releasing holder unlinks the file while still locking it; if that happened between our
            # open and our flock, we hold a lock on a file nobody else can see: take a fresh one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            except OSError as exc:
                self._fd = fd
                self.release()
                raise RunDirError(describe_os_error(exc, self.run_dir, "cannot write in run dir")) from None
            self._fd = fd
            return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent). The unlink comes first, while it is
        still held, so a waiting process can never lock a file that is about to vanish (see acquire)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only run dir (it became so meanwhile): the stale file does no harm
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a trainer dropped without close(): do not hold the run dir until exit
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
