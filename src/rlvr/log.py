"""rlvr's one logger (``logging.getLogger("rlvr")``), and warnings shown through it, each once.

rlvr warns with :func:`warnings.warn` (so callers can filter or catch them, e.g. ``pytest.warns``).
Python's default display repeats the warning's source line under it; :func:`install` (called by
the CLI) shows every warning as one plain line on stderr instead::

    warning: step 3: non-finite loss or gradient, update skipped (1 in a row)

A warning raised outside rlvr names its category and origin (``FutureWarning: ... (file.py:12)``).
A message already shown is not shown again, whichever code path raised it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger("rlvr")

_PACKAGE = Path(__file__).resolve().parent


class _Once(logging.Filter):
    """Passes each distinct message once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (rich's live progress display swaps it while it runs)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Plain(logging.Formatter):
    """``warning: message`` (the level in lower case, as the CLI writes ``error: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        return f"{text}\n{self.formatException(record.exc_info)}" if record.exc_info else text


def _from_rlvr(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def _show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """``warnings.showwarning`` replacement: one line through :data:`logger`, no source line."""
    text = str(message)
    if not _from_rlvr(filename):
        text = f"{category.__name__}: {text} ({Path(filename).name}:{lineno})"
    logger.warning(text)


def install() -> None:
    """Show warnings and rlvr's log records as single ``warning: ...`` lines on stderr, each once.

    Idempotent; replaces :func:`warnings.showwarning` for the process (the CLI calls it).
    """
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Plain())
        handler.addFilter(_Once())
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
    warnings.showwarning = _show
