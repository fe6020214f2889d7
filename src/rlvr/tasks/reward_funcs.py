"""Plain Python reward functions next to the task's verifier, as TRL's ``GRPOTrainer(reward_funcs=...)``.

A reward function is named in the config by import path (``reward.funcs=[pkg.module:fn]``) and is
called once per scoring batch with keyword lists, one entry per response::

    fn(prompts=[...], completions=[...], answer=[...], id=[...], solution=[...], **meta) -> [float | None, ...]

``prompts`` are the problems' prompt texts (before the chat template), ``completions`` the
responses; every key of the problems' ``meta`` dicts is passed too (None where a problem lacks it;
a meta key that repeats one of these names is not passed). As in TRL, a function should accept
``**kwargs``; one that does not gets only the names in its signature. TRL's dataset columns are these
fields here; its ``completion_ids`` and ``trainer_state`` have no counterpart.

The reward of response ``i`` (TRL's ``sum_then_normalize``: weights, then the advantage estimator)::

    r_i = verifier_weight * v_i + sum_k w_k * f_k(i)

``v_i`` is the task's verifier score (left out with ``reward.verifier=false``), ``w_k`` are
``reward.weights`` (all 1.0 when null, as TRL's ``reward_weights``). A function returning None for a
row means "does not apply" and adds nothing (TRL's NaN + ``nansum``). Calls are protected like the
verifier (:mod:`rlvr.tasks.scoring`): a call that raises, returns something that is not one value
per response, or does not return within ``reward.timeout_s`` scores 0 on every row of the batch; a
non-number, NaN or inf entry scores 0 on its row. Each case is counted per function.

Accuracy (``correct``) is the verifier's score >= 1 when the verifier is included (its weight may be
0); without it, the combined reward >= 1. A response counts as a failure in ``reward/failures_<kind>``
(and for :class:`~rlvr.tasks.scoring.ScorerHealth`) only when no source gave it a value: its kind is
that of the first failing source, or ``missing`` when every function returned None. DAPO's dynamic
sampling filters groups on the combined reward. The held-out evaluation (``eval/*``) scores with
the task's verifier alone.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem
from rlvr.tasks.scoring import ScorerPool, _as_reward, _report_error, score_rows, shared_pool

FIELDS = ("prompts", "completions", "answer", "id", "solution")
"""Keyword lists every reward function receives (meta keys with these names are not passed)."""

Row = tuple[float | None, str | None]
"""One source's outcome on one response: ``(value, None)``, ``(0.0, failure kind)`` or ``(None, None)`` (missing)."""


def split_path(path: str) -> tuple[str, str]:
    """``(module, attribute)`` of ``pkg.module:fn`` (or ``pkg.module.fn``)."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr or not all(part.isidentifier() for part in (*module.split("."), *attr.split("."))):
        raise ValueError(f"'{path}' is not an import path; write pkg.module:function")
    return module, attr


def load_reward_func(path: str, where: str = "reward.funcs") -> Callable[..., Any]:
    """The callable at import path ``path``; ConfigError naming ``where`` when it cannot be imported or called.

    Only paths the user wrote are imported (see docs/security.md); a class is refused (calling it
    would build an object, not score), point at a function or an instance.
    """
    try:
        module_name, attr = split_path(path)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any error in the user's module is a config error naming it
        raise ConfigError(f"{where}: cannot import module '{module_name}' of '{path}': {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{where}: module '{module_name}' has no attribute '{attr}' (from '{path}')")
        obj = getattr(obj, part)
    if inspect.isclass(obj) or not callable(obj):
        raise ConfigError(f"{where}: '{path}' is a {type(obj).__name__}, not a function or callable instance")
    accepted = _accepted(obj)
    if accepted is not None and "completions" not in accepted:
        raise ConfigError(f"{where}: '{path}' takes neither 'completions' nor **kwargs, so it cannot score responses")
    return obj


def _accepted(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names ``fn`` accepts, or None when it takes ``**kwargs`` (or has no readable signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


@dataclass(frozen=True)
class RewardFunc:
    """One reward function with its metric name (the path's last part) and weight."""

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0

    @classmethod
    def from_path(cls, path: str, weight: float = 1.0, where: str = "reward.funcs") -> "RewardFunc":
        return cls(split_path(path)[1].rsplit(".", 1)[-1], load_reward_func(path, where), weight)

    def call(self, columns: dict[str, list[Any]]) -> Any:
        """``fn`` on the batch: every column, or those its signature names when it takes no ``**kwargs``."""
        accepted = _accepted(self.fn)
        kwargs = {k: list(v) for k, v in columns.items() if accepted is None or k in accepted}
        return self.fn(**kwargs)


def batch_columns(problems: Sequence[Problem], responses: Sequence[str]) -> dict[str, list[Any]]:
    """The keyword lists of one call (see the module docstring)."""
    columns: dict[str, list[Any]] = {
        "prompts": [p.prompt for p in problems],
        "completions": list(responses),
        "answer": [p.answer for p in problems],
        "id": [p.id for p in problems],
        "solution": [p.solution for p in problems],
    }
    keys = dict.fromkeys(k for p in problems for k in p.meta if k not in FIELDS)
    columns.update({k: [p.meta.get(k) for p in problems] for k in keys})
    return columns


def func_rows(func: RewardFunc, status: str, value: Any, n: int) -> list[Row]:
    """Per-row outcomes of one batch call (``status``/``value`` as :meth:`ScorerPool.run` gives them)."""
    counted_in = f"reward/func_{func.name}_failures_error"
    if status == "ok" and (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n):
        got = f"{len(value)} values" if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else type(value).__name__
        status, value = "error", ValueError(f"returned {got}; expected a list of {n} rewards (one per completion)")
    if status == "error":
        _report_error(func.fn, value, counted_in)
    if status != "ok":
        return [(0.0, status)] * n
    return [(None, None) if v is None else _as_reward(v) for v in value]


@dataclass
class Scored:
    """A scored batch: the combined ``rewards``, samples no source scored by kind, and the rows the
    verifier found correct (None without the verifier)."""

    rewards: list[float]
    failures: Counter[str]
    verified: list[bool] | None = None


@dataclass
class _Tally:
    """One source's values and failures since the last :meth:`RewardScorer.pop_metrics`."""

    total: float = 0.0
    count: int = 0
    missing: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, rows: list[Row]) -> None:
        for value, kind in rows:
            if kind:
                self.failures[kind] += 1
            if value is None:
                self.missing += 1
            else:
                self.total, self.count = self.total + value, self.count + 1


class RewardScorer:
    """The verifier (per response) and reward functions (per batch), combined as in the module docstring.

    Called as ``scorer(problems, responses, timeout_s)``: ``timeout_s`` bounds each verifier call,
    ``func_timeout_s`` each batch call of a reward function (the functions of a batch run at once on
    the scorer pool). :meth:`pop_metrics` gives ``reward/func_<name>`` (mean of the values, failures
    as 0, missing rows left out), ``reward/func_<name>_failures_<kind>``, ``reward/func_<name>_missing``
    and ``reward/verifier`` over every call since the last pop; nothing when there are no functions.
    """

    def __init__(
        self,
        verifier: Callable[[Problem, str], Any] | None,
        funcs: Sequence[RewardFunc] = (),
        *,
        verifier_weight: float = 1.0,
        func_timeout_s: float = 60.0,
        pool: ScorerPool | None = None,
    ) -> None:
        if verifier is None and not funcs:
            raise ConfigError("reward: with reward.verifier=false name at least one function in reward.funcs")
        names = [f.name for f in funcs]
        if len(set(names)) != len(names) or "verifier" in names:
            raise ConfigError(f"reward.funcs: the functions' names must be distinct and not 'verifier', got {names}")
        self.verifier, self.funcs = verifier, list(funcs)
        self.verifier_weight, self.func_timeout_s, self.pool = verifier_weight, func_timeout_s, pool
        self._tallies: dict[str, _Tally] = {}

    @classmethod
    def from_config(cls, cfg: Any, verifier: Callable[[Problem, str], Any]) -> "RewardScorer":
        """From a :class:`rlvr.train.config.RewardConfig` and the task's ``score``."""
        weights = cfg.weights if cfg.weights is not None else [1.0] * len(cfg.funcs)
        funcs = [RewardFunc.from_path(p, w, f"reward.funcs[{i}]") for i, (p, w) in enumerate(zip(cfg.funcs, weights))]
        return cls(
            verifier if cfg.verifier else None,
            funcs,
            verifier_weight=cfg.verifier_weight,
            func_timeout_s=cfg.timeout_s,
        )

    def __call__(self, problems: list[Problem], responses: list[str], timeout_s: float) -> Scored:
        n = len(responses)
        sources: list[tuple[str, float, list[Row]]] = []
        verifier_rows: list[Row] | None = None
        if self.verifier is not None:
            verifier_rows = list(score_rows(self.verifier, problems, responses, timeout_s, pool=self.pool))
            sources.append(("verifier", self.verifier_weight, verifier_rows))
        if self.funcs:
            columns = batch_columns(problems, responses)
            jobs = [functools.partial(f.call, columns) for f in self.funcs]
            # the pool scores (item, response) pairs; here each item is one whole batch call
            outcomes = (self.pool or shared_pool()).run(lambda job, _: job(), jobs, [""] * len(jobs), self.func_timeout_s)  # type: ignore[arg-type]
            for func, (status, value) in zip(self.funcs, outcomes):
                sources.append((func.name, func.weight, func_rows(func, status, value, n)))
        rewards, failures = combine(sources, n)
        if self.funcs:
            for name, _, rows in sources:
                self._tallies.setdefault(name, _Tally()).add(rows)
        verified = None if verifier_rows is None else [value is not None and value >= 1.0 for value, _ in verifier_rows]
        return Scored(rewards, failures, verified)

    def pop_metrics(self, gather: Callable[[Any], list[Any]] | None = None) -> dict[str, float]:
        """Per-source metrics since the last call (see the class docstring), then reset.

        ``gather`` (multi-process: ``Dist.all_gather_object``) merges every rank's tallies first, so
        the metrics cover all the step's responses, not only those this rank scored.
        """
        tallies = self._tallies
        if gather is not None:
            tallies = {}
            for part in gather(self._tallies):
                for name, t in part.items():
                    merged = tallies.setdefault(name, _Tally())
                    merged.total, merged.count, merged.missing = merged.total + t.total, merged.count + t.count, merged.missing + t.missing
                    merged.failures.update(t.failures)
        out: dict[str, float] = {}
        for name, tally in tallies.items():
            key = "reward/verifier" if name == "verifier" and self.verifier is not None else f"reward/func_{name}"
            if tally.count:
                out[key] = tally.total / tally.count
            if tally.missing:
                out[f"{key}_missing"] = tally.missing
            out.update({f"{key}_failures_{kind}": count for kind, count in sorted(tally.failures.items())})
        self._tallies = {}
        return out


def combine(sources: Sequence[tuple[str, float, list[Row]]], n: int) -> tuple[list[float], Counter[str]]:
    """``sum_s w_s * value_s`` per row (failed and missing values add nothing) and the rows no source scored.

    A row counts as failed when no source has a value for it; its kind is the first failing
    source's, else ``missing``.
    """
    rewards: list[float] = []
    failures: Counter[str] = Counter()
    for i in range(n):
        row = [(weight, rows[i]) for _, weight, rows in sources]
        rewards.append(sum(weight * value for weight, (value, kind) in row if value is not None and not kind))
        if not any(value is not None and not kind for _, (value, kind) in row):
            failures[next((kind for _, (_, kind) in row if kind), "missing")] += 1
    return rewards, failures


def as_scorer(score: "Callable[[Problem, str], Any] | RewardScorer") -> RewardScorer:
    """``score`` itself when it is a :class:`RewardScorer`, else a verifier-only scorer around it."""
    return score if isinstance(score, RewardScorer) else RewardScorer(score)
