"""Ctrl-C and SIGTERM (SLURM preemption) stop a run at the next safe point, with a checkpoint.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM only records the request; the
trainer checks :attr:`StopSignals.requested` between steps (and between warm-start steps), saves a
checkpoint and raises :class:`rlvr.errors.Interrupted`, which the CLI turns into one line and the
exit status ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM). A second Ctrl-C raises
KeyboardInterrupt at once (the newest complete checkpoint is still on disk: checkpoints are atomic).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager recording SIGINT/SIGTERM instead of dying; a no-op outside the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
