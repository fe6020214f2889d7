"""Per-prompt history across steps: each visit's accuracy and mean reward, keyed by problem id.

Every RL step the trainer records, for each prompt drawn that step, one **visit**::

    accuracy = (1/n) sum_i 1[response i verified correct]      the group's pass rate
    reward   = (1/n) sum_i score_i                             the verifier reward (before shaping)

over the ``n`` responses of that prompt in the step (a prompt drawn twice in one step gets one visit
over both groups). What reads it: 1-shot RLVR's example selection (``rlvr data select``,
:mod:`rlvr.algos.one_shot_rlvr`), DRIVE's hard set (:mod:`rlvr.algos.drive`), R^3's reflection
(prompts never solved so far, :mod:`rlvr.rollout.r3`), and any method that needs a prompt's past
(its per-step context carries only the step).

It can also keep **responses** per prompt (:meth:`PromptHistory.store_response`: token ids, score,
step; the ``keep`` most recent per prompt): R^3's replay buffer of earlier successes. They are in
the checkpoint (CPU int32 tensors), not in the JSONL file.

The history is replicated: every rank records the same global batch, so it is identical on every
rank, and it is saved in the checkpoint's replicated state (plain lists and dicts). Rank 0 also
appends each visit to ``<run>/prompt_history.jsonl`` (one JSON line per visit; the first visit of a
prompt in the run carries its :class:`~rlvr.tasks.base.Problem`, so the file alone can rebuild a
data set from it); on resume the lines after the checkpoint's step are dropped, as for
``metrics.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlvr.errors import RLVRError
from rlvr.tasks.base import Problem
from rlvr.tasks.subset import json_line, problem_from_record, problem_record
from rlvr.train.logging import MetricsWriter, read_metrics

if TYPE_CHECKING:
    from torch import Tensor

PROMPT_HISTORY_FILE = "prompt_history.jsonl"
VisitField = Literal["accuracy", "reward"]
VISIT_FIELDS: tuple[str, ...] = ("step", "accuracy", "reward", "n")


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for a prompt: its token ids (``(L,)`` int32, CPU), its score and the RL step it was sampled at."""

    ids: Tensor
    score: float
    step: int


class PromptHistory:
    """Visits of each prompt id, in the order the prompts were first seen (see the module docstring).

    ``path``: the JSONL file rank 0 appends to (None on the other ranks). ``keep_problems``: also
    hold each prompt's Problem (in the checkpoint too), for components that rebuild a data set from
    the history during the run (DRIVE's hard set).
    """

    def __init__(self, path: Path | None = None, keep_problems: bool = False) -> None:
        self.visits: dict[str, dict[str, list[Any]]] = {}
        self.problems: dict[str, Problem] = {}
        self.responses: dict[str, list[StoredResponse]] = {}
        self.keep_problems = keep_problems
        self.writer = MetricsWriter(path) if path is not None else None

    def record(self, step: int, problems: Sequence[Problem], correct: Tensor, scores: Tensor) -> list[dict[str, Any]]:
        """One visit per distinct prompt of the step's rows (row ``i`` answers ``problems[i]``); returns them."""
        if not (len(problems) == correct.shape[0] == scores.shape[0]):
            raise RLVRError(f"history: {len(problems)} problems, {correct.shape[0]} correct flags, {scores.shape[0]} scores")
        rows: dict[str, list[int]] = {}
        first: dict[str, Problem] = {}
        for i, problem in enumerate(problems):
            rows.setdefault(problem.id, []).append(i)
            first.setdefault(problem.id, problem)
        ok, values = correct.detach().cpu().double().tolist(), scores.detach().cpu().double().tolist()
        out = []
        for pid, index in rows.items():
            visit = {
                "step": int(step),
                "accuracy": sum(ok[i] for i in index) / len(index),
                "reward": sum(values[i] for i in index) / len(index),
                "n": len(index),
            }
            new = pid not in self.visits
            entry = self.visits.setdefault(pid, {key: [] for key in VISIT_FIELDS})
            for key in VISIT_FIELDS:
                entry[key].append(visit[key])
            if self.keep_problems and pid not in self.problems:
                self.problems[pid] = first[pid]
            line: dict[str, Any] = {"prompt_id": pid, **visit}
            if new:  # the file alone can rebuild a data set: the first visit carries the problem (as JSON holds it)
                line["problem"] = json.loads(json_line(problem_record(first[pid])))
            out.append(line)
            if self.writer is not None:
                self.writer.write(line)
        return out

    def series(self, field: VisitField = "accuracy") -> dict[str, list[float]]:
        """``{prompt id: [value at each visit]}`` (first-seen order): the input of 1-shot RLVR's ranking."""
        return {pid: list(entry[field]) for pid, entry in self.visits.items()}

    def last(self, prompt_id: str, field: VisitField = "accuracy") -> float | None:
        """The value at the prompt's latest visit (None if never visited)."""
        entry = self.visits.get(prompt_id)
        return float(entry[field][-1]) if entry and entry[field] else None

    def visit_values(self, prompt_id: str, field: VisitField = "accuracy") -> list[float]:
        """The prompt's value at each visit, oldest first (empty if never visited)."""
        entry = self.visits.get(prompt_id)
        return [float(v) for v in entry[field]] if entry else []

    def store_response(self, prompt_id: str, ids: Sequence[int], score: float, step: int, keep: int) -> None:
        """Keep a response of ``prompt_id``; only its ``keep`` most recent ones stay."""
        entries = self.responses.setdefault(prompt_id, [])
        entries.append(StoredResponse(torch.tensor(list(ids), dtype=torch.int32), float(score), int(step)))
        del entries[: max(0, len(entries) - keep)]

    def stored_responses(self, prompt_id: str) -> list[StoredResponse]:
        """The responses kept for ``prompt_id``, oldest first."""
        return list(self.responses.get(prompt_id, []))

    def problem(self, prompt_id: str) -> Problem:
        """The stored Problem of a visited prompt (``keep_problems=True`` only)."""
        if prompt_id not in self.problems:
            raise RLVRError(f"history: no stored problem for prompt '{prompt_id}' (keep_problems is {self.keep_problems})")
        return self.problems[prompt_id]

    def truncate_file_after(self, step: int) -> None:
        """Drop the file's visits newer than ``step`` (on resume: the checkpoint's step; 0 for a new RL phase)."""
        if self.writer is not None:
            self.writer.truncate_after_step(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "visits": {pid: {k: list(v) for k, v in entry.items()} for pid, entry in self.visits.items()},
            "problems": {pid: problem_record(p) for pid, p in self.problems.items()} if self.keep_problems else {},
            "responses": {
                pid: [{"ids": e.ids, "score": e.score, "step": e.step} for e in entries] for pid, entries in self.responses.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.visits = {str(pid): {k: list(entry[k]) for k in VISIT_FIELDS} for pid, entry in (state.get("visits") or {}).items()}
        self.problems = {
            str(pid): problem_from_record(record, f"checkpoint prompt_history problem '{pid}'")
            for pid, record in (state.get("problems") or {}).items()
        }
        self.responses = {
            str(pid): [StoredResponse(e["ids"].to(torch.int32), float(e["score"]), int(e["step"])) for e in entries]
            for pid, entries in (state.get("responses") or {}).items()
        }


def read_prompt_history(path: Path, field: VisitField = "accuracy") -> tuple[dict[str, list[float]], dict[str, Problem]]:
    """``(series, problems)`` of a run's ``prompt_history.jsonl``: each prompt's values in visit order and its Problem."""
    if not path.is_file():
        raise RLVRError(f"{path}: no prompt history (runs write it from this version on; train the pool first)")
    series: dict[str, list[float]] = {}
    problems: dict[str, Problem] = {}
    for number, record in enumerate(read_metrics(path), 1):
        pid = record.get("prompt_id")
        value = record.get(field)
        if not isinstance(pid, str) or not isinstance(value, (int, float)):
            raise RLVRError(f"{path} record {number}: expected 'prompt_id' and a number '{field}', got {str(record)[:120]}")
        series.setdefault(pid, []).append(float(value))
        if "problem" in record and pid not in problems:
            problems[pid] = problem_from_record(record["problem"], f"{path} record {number}")
    return series, problems


def select_examples(
    run_dir: Path, k: int = 1, score: str = "std", out: Path | None = None
) -> tuple[Path, list[tuple[str, float]]]:
    """1-shot RLVR's selection from a run: the ``k`` prompts of highest historical-variance score, written as a data set.

    Scores the per-visit accuracies of ``<run_dir>/prompt_history.jsonl`` with
    :func:`rlvr.algos.one_shot_rlvr.selection_scores` (``score``: ``std`` or ``lim``), ranks them with
    :func:`~rlvr.algos.one_shot_rlvr.rank_examples` and writes the top ``k`` Problems to ``out``
    (default ``<run_dir>/selected_<score>_k<k>.jsonl``), best first. Returns the file and the
    ``(prompt id, score)`` pairs written.
    """
    from rlvr.algos.one_shot_rlvr import SELECTION_METHODS, rank_examples, selection_scores
    from rlvr.tasks.subset import write_problem_file

    if k < 1:
        raise RLVRError(f"--k must be >= 1, got {k}")
    if score not in SELECTION_METHODS:
        raise RLVRError(f"--score must be one of {', '.join(SELECTION_METHODS)}, got '{score}'")
    path = Path(run_dir) / PROMPT_HISTORY_FILE
    series, problems = read_prompt_history(path)
    scores = selection_scores(series, score)  # type: ignore[arg-type]
    chosen = rank_examples(series, score)[:k]  # type: ignore[arg-type]
    missing = [pid for pid in chosen if pid not in problems]
    if missing:
        raise RLVRError(f"{path}: no problem record for {missing[:3]} (its first visit's line is missing)")
    target = Path(out) if out is not None else Path(run_dir) / f"selected_{score}_k{k}.jsonl"
    write_problem_file([problems[pid] for pid in chosen], target)
    return target, [(pid, scores[pid]) for pid in chosen]
