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


# --------------------------------------------------------------------------------------------
# the run's logger: metrics.jsonl + optional TensorBoard / wandb, completions, progress lines
# --------------------------------------------------------------------------------------------


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record as ``metrics.jsonl`` stores them (non-finite -> null, dropped)."""
    out = {}
    for key, value in record.items():
        value = _jsonable(value)
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (TensorBoard renders text summaries as Markdown); cells on one line each."""

    def cell(value: Any) -> str:
        return "<br>".join(str(value).replace("|", "\\|").splitlines())

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


COMPLETION_COLUMNS = ["step", "prompt", "response", "reward", "length", "truncated"]


class RunLogger:
    """Every metrics record of a run, fanned out to ``logging.backends``; completions; progress lines.

    ``metrics.jsonl`` (:class:`MetricsWriter`) is always written and is the record resume and the
    reports read; TensorBoard (``<run>/tensorboard``) and wandb (``<run>/wandb``, or ``WANDB_DIR``)
    receive the same numeric entries at the same steps. Backends open at the first write, so a
    run that fails before its first step leaves no event files. On resume
    (:meth:`truncate_after_step`) TensorBoard drops the events of the replayed steps (``purge_step``).
    """

    def __init__(self, run_dir: Path, cfg: Any, console: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.options = cfg.logging
        self.console = console
        self.jsonl = MetricsWriter(self.run_dir / "metrics.jsonl")
        self._tb: Any = None
        self._wandb: Any = None
        self._purge_step: int | None = None
        missing = [name for name in self.options.backends if name != "jsonl" and not _importable(name)]
        if missing:
            raise RLVRError(
                f"logging.backends lists {', '.join(missing)}, which is not installed: pip install 'rlvr[logging]' "
                "(or drop it from logging.backends)"
            )

    @property
    def path(self) -> Path:
        """The ``metrics.jsonl`` file."""
        return self.jsonl.path

    def truncate_after_step(self, step: int) -> None:
        self.jsonl.truncate_after_step(step)
        self._purge_step = step + 1

    def write(self, record: dict[str, Any]) -> None:
        """One record to every backend, then (stdout not a terminal) a progress line when it is due."""
        self.jsonl.write(record)
        step = int(record.get("step", 0))
        scalars = _scalars(record)
        if "tensorboard" in self.options.backends:
            writer = self._tensorboard()
            for key, value in scalars.items():
                writer.add_scalar(key, value, global_step=step)
            writer.flush()
        if "wandb" in self.options.backends:
            self._wandb_run().log(scalars, step=step)
        self._progress_line(step, record)

    def log_completions(self, step: int, rollout: Any) -> None:
        """Every ``completions_every`` steps: the step's samples to ``completions.jsonl`` and as a table.

        ``rollout`` is the step's :class:`rlvr.rollout.stage.RolloutResult` (row ``i`` answers
        ``problems[i]`` with ``batch.responses[i]``, verified reward ``scores[i]``).
        """
        every = self.options.completions_every
        if every <= 0 or step % every:
            return
        batch = rollout.batch
        lengths = batch.response_mask.sum(-1).tolist()
        truncated = batch.truncated.tolist()
        rows = [
            [step, problem.prompt, response, float(score), int(length), bool(cut)]
            for problem, response, score, length, cut in zip(
                rollout.problems, batch.responses, rollout.scores.tolist(), lengths, truncated
            )
        ]
        path = self.run_dir / "completions.jsonl"
        with writing(path), open(path, "a") as fh:
            fh.write("".join(json.dumps(dict(zip(COMPLETION_COLUMNS, row))) + "\n" for row in rows))
        if "tensorboard" in self.options.backends:
            self._tensorboard().add_text("completions", _markdown_table(COMPLETION_COLUMNS, rows), global_step=step)
        if "wandb" in self.options.backends:
            import wandb

            self._wandb_run().log({"completions": wandb.Table(columns=COMPLETION_COLUMNS, data=rows)}, step=step)

    def close(self) -> None:
        """Flush and close the backends (TensorBoard's event file, the wandb run)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    # ------------------------------------------------------------------ backends
    def _tensorboard(self) -> Any:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=self._purge_step)
        return self._tb

    def _wandb_run(self) -> Any:
        if self._wandb is None:
            import os

            import wandb

            directory = os.environ.get("WANDB_DIR") or str(self.run_dir)
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                project=self.options.wandb_project,
                mode=self.options.wandb_mode,
                dir=directory,
                name=self.run_dir.name,
                config=self.cfg.model_dump(mode="json"),
                settings=wandb.Settings(silent=True, console="off"),
            )
            if self.console is not None and self.options.wandb_mode == "offline":
                self.console.print(
                    f"wandb: offline run in {Path(self._wandb.dir).parent}; upload it with `wandb sync`",
                    highlight=False, markup=False, soft_wrap=True,
                )  # fmt: skip
        return self._wandb

    # ------------------------------------------------------------------ progress
    def _progress_line(self, step: int, record: dict[str, Any]) -> None:
        """``step 10/150  reward 0.312  acc 0.250  H 0.641  2.31 s/step`` when stdout is not a terminal.

        On a terminal the trainer's progress bar shows the same live; redirected (nohup, SLURM,
        ``> file``) that bar prints nothing until it ends, so these lines are the progress.
        """
        console = self.console
        if console is None or console.is_terminal or "reward/mean" not in record:
            return
        total = self.cfg.train.steps
        if step % self.options.progress_every and step != total:
            return
        line = (
            f"step {step}/{total}  reward {record['reward/mean']:.3f}  acc {record.get('accuracy', 0.0):.3f}  "
            f"H {record.get('entropy/mean', 0.0):.3f}  {record.get('time/step_s', 0.0):.2f} s/step"
        )
        if "eval/accuracy_greedy" in record:
            line += f"  eval acc {record['eval/accuracy_greedy']:.3f}"
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class TruncationMonitor:
    """Warns once when ``threshold`` or more of the responses hit ``rollout.max_new_tokens`` for
    ``patience`` steps in a row: answers that never finish earn no reward, and nothing else says so."""

    def __init__(self, max_new_tokens: int, threshold: float = 0.9, patience: int = 3) -> None:
        self.max_new_tokens = max_new_tokens
        self.threshold = threshold
        self.patience = patience
        self.streak = 0
        self.warned = False

    def update(self, truncated_frac: float) -> None:
        """Account one step's ``response_length/truncated_frac``."""
        self.streak = self.streak + 1 if truncated_frac >= self.threshold else 0
        if self.streak >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(
                f"{truncated_frac:.0%} of the responses were cut at rollout.max_new_tokens={self.max_new_tokens} "
                f"({self.threshold:.0%} or more for {self.streak} steps in a row): they never reach an answer, so the "
                "reward stays near 0. Raise rollout.max_new_tokens (e.g. rollout.max_new_tokens=1024 for math "
                "reasoning)"
            )
