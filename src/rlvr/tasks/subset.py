"""A fixed subset of stored problems, repeated: e.g. 1-shot RLVR's selected example (arXiv 2504.20571).

The ``subset`` task serves the problems of a JSONL file (one Problem record per line:
``id``, ``prompt``, ``answer``, ``solution``, ``meta``, as written by ``rlvr data select`` from a
run's ``prompt_history.jsonl``) and delegates scoring and the held-out set to a **base** task built
from the registry (``base``, ``base_kwargs``): the stored records carry every field the base
task's scorer reads (countdown reads ``meta["numbers"]`` and ``meta["target"]``, math tasks the
``answer``, reasoning-gym its ``meta["index"]`` into the same seeded data set).

Training draws repeat the stored problems to fill each batch, like the official recipe duplicates
its one example to the batch size (One-Shot-RLVR ``data/data_selection.sh``): passes over the
problems, each in an order shuffled with the run's data RNG, so a batch of ``n`` draws holds each of
the ``k`` problems ``floor(n / k)`` or ``ceil(n / k)`` times (``k = 1``: every draw is that problem).
"""

from __future__ import annotations

import dataclasses
import json
import random
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlvr.errors import ConfigError, RLVRError
from rlvr.files import decode_utf8, writing
from rlvr.tasks.base import Problem, Task, tasks


def problem_record(problem: Problem) -> dict[str, Any]:
    """A Problem as a plain dict (``id``, ``prompt``, ``answer``, ``solution``, ``meta``)."""
    return dataclasses.asdict(problem)


def problem_from_record(record: Mapping[str, Any], where: str = "problem") -> Problem:
    """The Problem of a :func:`problem_record` dict; one without a str ``id`` and ``prompt`` is an RLVRError."""
    if not isinstance(record, Mapping) or not isinstance(record.get("id"), str) or not isinstance(record.get("prompt"), str):
        raise RLVRError(f"{where}: expected a problem record with string 'id' and 'prompt', got {str(record)[:120]}")
    meta = record.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise RLVRError(f"{where}: 'meta' must be a mapping, got {type(meta).__name__}")
    solution = record.get("solution")
    return Problem(
        id=record["id"],
        prompt=record["prompt"],
        answer=str(record.get("answer", "")),
        solution=None if solution is None else str(solution),
        meta=dict(meta),
    )


def json_line(record: dict[str, Any]) -> str:
    """``record`` as one JSON line; values JSON cannot hold (in a task's ``meta``) become their repr, with a warning."""
    try:
        return json.dumps(record)
    except TypeError:
        warnings.warn("a problem's meta holds values JSON cannot store; they are written as text")
        return json.dumps(record, default=repr)


def write_problem_file(problems: Iterable[Problem], path: Path) -> Path:
    """``problems`` as a JSONL data set (one :func:`problem_record` per line), the ``subset`` task's input."""
    lines = [json_line(problem_record(p)) for p in problems]
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
    return path


def load_problem_file(path: str | Path) -> list[Problem]:
    """The Problems of a JSONL file of problem records; a malformed line is a ConfigError naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"task.kwargs.path: {file} is not a file (write one with `rlvr data select RUN_DIR`)")
    problems: list[Problem] = []
    for number, line in enumerate(decode_utf8(file.read_bytes(), str(file)).splitlines(), 1):
        if not line.strip():
            continue
        try:
            problems.append(problem_from_record(json.loads(line), f"{file} line {number}"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file} line {number} is not JSON ({exc.msg})") from None
        except RLVRError as exc:
            raise ConfigError(str(exc)) from None
    if not problems:
        raise ConfigError(f"{file} holds no problems")
    return problems


@tasks.register("subset")
class SubsetTask:
    """The problems of a JSONL file, repeated to fill every batch; scorer and held-out set of a base task.

    Knobs: ``path`` (the file, e.g. from ``rlvr data select``), ``base`` (the registered task whose
    scorer and held-out problems are used; default countdown) and ``base_kwargs`` (its knobs).
    """

    name = "subset"

    def __init__(self, *, path: str, base: str = "countdown", base_kwargs: dict[str, Any] | None = None) -> None:
        if base == self.name:
            raise ConfigError("task.kwargs.base: the base task of 'subset' cannot be 'subset'")
        self.problems = load_problem_file(path)
        self.base: Task = tasks.build(base, base_kwargs or {}, "task.kwargs.base_kwargs").fn

    def train_problems(self, n: int, rng: random.Random) -> list[Problem]:
        """``n`` stored problems: passes over them, each in an order shuffled with ``rng`` (no other state,
        so a resumed run draws the same)."""
        out: list[Problem] = []
        while len(out) < n:
            order = list(range(len(self.problems)))
            rng.shuffle(order)
            out.extend(self.problems[i] for i in order[: n - len(out)])
        return out

    def heldout_problems(self, n: int) -> list[Problem]:
        """The base task's held-out problems (what the selected problems should generalise to)."""
        return self.base.heldout_problems(n)

    def score(self, problem: Problem, response: str) -> float:
        """The base task's verifier."""
        return self.base.score(problem, response)
