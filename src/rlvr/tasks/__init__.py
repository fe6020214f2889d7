"""Verifiable tasks: problem sources with exact scorers, registered by name.

Built-ins: ``countdown`` (default; tiny char-level model), ``arithmetic``, ``math_jsonl`` (local
math datasets scored with math-verify), ``reasoning_gym`` (optional ``reasoning-gym`` package) and
``subset`` (stored problems repeated, e.g. 1-shot RLVR's selected example, scored by a base task).
Register your own with ``@tasks.register("name")`` on a class whose ``__init__`` keyword arguments
are its knobs.
"""

from __future__ import annotations

from typing import Any

from rlvr.tasks import arithmetic, countdown, gym, math, subset  # noqa: F401 - registers the built-ins
from rlvr.tasks.base import Problem, Task, tasks


def build_task(name: str, knobs: dict[str, Any] | None = None, where: str = "task.kwargs") -> Task:
    """An instance of the task registered as ``name`` with ``knobs``.

    An unknown name raises UnknownNameError listing the valid names; an unknown knob or a value of
    the wrong type raises ConfigError naming ``where`` (the config key or CLI flag the knobs came from).
    """
    return tasks.build(name, knobs or {}, where=where).fn


__all__ = ["Problem", "Task", "build_task", "tasks"]
