"""Metrics sinks: one JSON object per line in ``metrics.jsonl``, plus optional TensorBoard / wandb."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsWriter:
    """Appends metric records to a JSONL file, flushing each line so a crash loses nothing written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in record.items()})
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()

    def truncate_after_step(self, step: int) -> None:
        """Drop records newer than ``step`` (used on resume so replayed steps are not logged twice)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
