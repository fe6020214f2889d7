"""One run per output directory: a fresh run needs an empty directory, and a live run holds a lock.

Without ``--resume`` a directory that already holds files is refused (``--overwrite`` clears it
first), so two runs never mix their metrics or checkpoints. While a run is alive it holds an
exclusive ``flock`` on ``<run>/.rlvr.lock``; a second run in the same directory fails at once. The
kernel drops the lock when the process dies (even with ``kill -9``), so a crashed run never leaves
a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rlvr.errors import RLVRError

LOCK_FILE = ".rlvr.lock"


def run_contents(run_dir: Path) -> list[str]:
    """Names of what ``run_dir`` holds besides the lock file (empty if it does not exist)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


def check_fresh_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Raise unless a new run may start in ``run_dir`` (it is empty, or ``overwrite`` allows clearing it)."""
    held = run_contents(run_dir)
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise RLVRError(
            f"output_dir {run_dir} already holds a run ({shown}); continue it with --resume, "
            "delete it with --overwrite, or choose another output_dir"
        )


def _acquire(run_dir: Path) -> int:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RLVRError(f"cannot use output_dir {run_dir}: {exc.strerror}; choose a writable output_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RLVRError(
            f"output_dir {run_dir} is in use by another rlvr run (pid {holder}); wait for it to finish "
            "or choose another output_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _clear(run_dir: Path) -> None:
    for name in run_contents(run_dir):
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextmanager
def claimed_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold ``run_dir`` for one run: locked, then checked (see :func:`check_fresh_run_dir`) and cleared
    on overwrite, unless resuming."""
    fd = _acquire(run_dir)
    try:
        if not resume:
            check_fresh_run_dir(run_dir, overwrite)
            _clear(run_dir)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
