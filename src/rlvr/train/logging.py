"""Metrics sinks: one JSON object per line in ``metrics.jsonl``, plus optional TensorBoard / wandb."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from rlvr.errors import RLVRError
from rlvr.files import writing


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsWriter:
    """Appends metric records to a JSONL file, flushing each line so a crash loses nothing written.

    A write that fails (full disk, read-only directory) raises an RLVRError naming the file and the fix.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with writing(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in record.items()})
        with writing(self.path), open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()

    def truncate_after_step(self, step: int) -> None:
        """Drop records newer than ``step`` (used on resume so replayed steps are not logged twice)."""
        if not self.path.exists():
            return
        kept = [line for line, record in _lines(self.path) if record.get("step", 0) <= step]
        with writing(self.path):
            self.path.write_text("".join(line + "\n" for line in kept))


def _lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` of a metrics file. An incomplete last line (a write cut short by a full disk
    or a kill) is dropped with a warning; any other line that is not JSON is an RLVRError."""
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    out = []
    for number, line in lines:
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if number != lines[-1][0]:
                raise RLVRError(f"{path} line {number} is not JSON; the file is damaged: delete that line") from None
            warnings.warn(f"{path} line {number} is incomplete (a write was cut short); it is ignored")
    return out


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file."""
    if not path.exists():
        return []
    return [record for _, record in _lines(path)]
