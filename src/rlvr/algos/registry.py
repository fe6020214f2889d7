"""Registries, one per pipeline stage: reward -> advantage -> token_weight -> policy_loss + regularizer.

A registry maps a name to a *factory*: a plain function ``fn(ctx, *, knob=default, ...)`` or a class
``Cls(*, knob=default, ...)`` whose instances are called as ``obj(ctx)``. ``Registry.build(name, knobs)``
turns either into a ready component and checks the knobs against the factory's signature first, so a
typo fails before any work with the list of valid knobs.

Each entry also records which context fields it reads (``requires``), so the trainer computes, e.g.,
per-token entropy with gradients only when some selected component needs it.

Users register their own methods the same way the built-ins do::

    from rlvr.algos import advantage

    @advantage.register("my_adv", requires=("rewards", "group_ids"))
    def my_adv(ctx, *, scale: float = 1.0): ...
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from rlvr.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Entry:
    """One registered method: its factory and the context fields it reads."""

    name: str
    factory: Callable[..., Any]
    requires: frozenset[str] = field(default_factory=frozenset)
    doc: str = ""

    def knob_defaults(self) -> dict[str, Any]:
        """Keyword knobs the factory accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
        return {p.name: p.default for p in _knob_parameters(self.factory)}


def _knob_parameters(factory: Callable[..., Any]) -> list[inspect.Parameter]:
    """Keyword parameters a user may set: all of a class's __init__, all but the first of a function."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    params = params[1:]  # drop ``self`` (class) or ``ctx`` (function)
    return [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


class Registry:
    """Name -> method table of one pipeline stage."""

    def __init__(self, stage: str, package: str = "rlvr.algos") -> None:
        self.stage = stage
        self.package = package
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, requires: Iterable[str] = (), override: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator adding ``factory`` under ``name``.

        Registering a *different* object under a taken name raises unless ``override=True``, so two
        plug-ins cannot silently shadow each other.
        """

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            existing = self._entries.get(name)
            if existing is not None and existing.factory is not factory and not override:
                raise ConfigError(
                    f"{self.stage} '{name}' is already registered by {existing.factory.__module__}."
                    f"{existing.factory.__qualname__}; pass override=True to replace it"
                )
            doc = inspect.getdoc(factory) or ""
            self._entries[name] = Entry(name, factory, frozenset(requires), doc)
            return factory

        return decorator

    def _load_builtins(self) -> None:
        """Import the package holding the built-in methods once (its __init__ imports every module)."""
        importlib.import_module(self.package)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that replace a method)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises with the list of valid names."""
        self._load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownNameError(f"unknown {self.stage} '{name}'; valid names: {valid}") from None

    def get(self, name: str) -> Callable[..., Any]:
        """The raw factory registered under ``name``."""
        return self.entry(name).factory

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def check_knobs(self, name: str, knobs: dict[str, Any], where: str = "") -> None:
        """Raise ConfigError if ``knobs`` holds a key the method does not take or lacks a required one."""
        entry = self.entry(name)
        params = _knob_parameters(entry.factory)
        accepted = {p.name for p in params}
        prefix = f"{where}: " if where else ""
        for key in knobs:
            if key not in accepted:
                valid = ", ".join(sorted(accepted)) or "(none)"
                raise ConfigError(f"{prefix}{self.stage} '{name}' has no knob '{key}'; valid knobs: {valid}")
        for p in params:
            if p.default is inspect.Parameter.empty and p.name not in knobs:
                raise ConfigError(f"{prefix}{self.stage} '{name}' needs knob '{p.name}'")

    def build(self, name: str, knobs: dict[str, Any] | None = None, where: str = "") -> "Component":
        """A ready component: a class instance, or the function with its knobs bound."""
        knobs = dict(knobs or {})
        self.check_knobs(name, knobs, where)
        entry = self.entry(name)
        if inspect.isclass(entry.factory):
            obj = entry.factory(**knobs)
        else:
            obj = functools.partial(entry.factory, **knobs)
        return Component(name=name, stage=self.stage, fn=obj, requires=entry.requires, knobs=knobs)


@dataclass
class Component:
    """A built method: call it with a context.

    Stateful (class) methods may define ``state_dict``/``load_state_dict`` (saved in checkpoints)
    and ``prepare(ctx)`` (called once per step on the full rollout batch). Controllers may also
    define ``bind(pipeline)`` (called once with the built pipeline, e.g. to find the regularizer
    whose coefficient they drive) and ``after_step(metrics) -> dict`` (called after the update with
    the step's averaged update metrics).
    """

    name: str
    stage: str
    fn: Callable[..., Any]
    requires: frozenset[str]
    knobs: dict[str, Any]

    def __call__(self, ctx: Any) -> Any:
        return self.fn(ctx)

    def state_dict(self) -> dict[str, Any]:
        getter = getattr(self.fn, "state_dict", None)
        return getter() if callable(getter) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loader = getattr(self.fn, "load_state_dict", None)
        if callable(loader):
            loader(state)

    def prepare(self, ctx: Any) -> dict[str, float]:
        """Per-step hook on the whole rollout batch (no grad), before the update; returns metrics.

        Class components define ``prepare(ctx)`` to set state from the rollout, e.g. SIREN takes its
        entropy anchor from the first batch of the initial policy.
        """
        hook = getattr(self.fn, "prepare", None)
        return (hook(ctx) or {}) if callable(hook) else {}


advantage = Registry("advantage")
policy_loss = Registry("policy_loss")
regularizer = Registry("regularizer")
token_weight = Registry("token_weight")
reward = Registry("reward")
controller = Registry("controller")

REGISTRIES: dict[str, Registry] = {
    r.stage: r for r in (advantage, policy_loss, regularizer, token_weight, reward, controller)
}
