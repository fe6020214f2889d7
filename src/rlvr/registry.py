"""Name -> method tables with typed knobs, shared by the algorithm stages and the tasks (no torch here).

A registry maps a name to a *factory*: a plain function ``fn(ctx, *, knob=default, ...)`` or a class
``Cls(*, knob=default, ...)`` whose instances are called as ``obj(ctx)``. ``Registry.build(name, knobs)``
turns either into a ready component and checks the knobs against the factory's signature first: an
unknown knob, a missing required one or a value of the wrong type (``clip_high=abc``) fails before
any work, naming the key and what it accepts.

Each entry also records which context fields it reads (``requires``), so the trainer computes, e.g.,
per-token entropy with gradients only when some selected component needs it.

The built-in methods are described by ``rlvr/catalog.json`` (generated from the live registries by
``rlvr methods --catalog``; a test keeps it current), so that a configuration is validated without
importing torch or any method module. (Tasks import no torch; their registry is always live.)
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from rlvr.errors import ConfigError, UnknownNameError

CATALOG_FILE = Path(__file__).with_name("catalog.json")
REQUIRED = "<required>"
"""The ``default`` of a knob that has none in a :class:`KnobSpec`."""


@dataclass(frozen=True)
class KnobSpec:
    """One keyword knob of a method: its annotation as source text (``Literal`` aliases written out) and its default."""

    name: str
    annotation: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return isinstance(self.default, str) and self.default == REQUIRED


def _annotation_text(annotation: Any, namespace: dict[str, Any]) -> str:
    if annotation is inspect.Parameter.empty:
        return "Any"
    if isinstance(annotation, str):
        return _inline_literal_aliases(annotation, namespace)
    return inspect.formatannotation(annotation)


_NAME_OR_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|[A-Za-z_]\w*")


def _inline_literal_aliases(text: str, namespace: dict[str, Any]) -> str:
    """``text`` with each name that ``namespace`` binds to a ``Literal[...]`` alias written out.

    With postponed annotations a signature's text is ``scale: GrpoScale``; the catalog stores
    ``Literal['group', 'batch']`` instead, which :func:`validate_knobs` resolves without the module.
    """

    def expand(match: re.Match[str]) -> str:
        value = namespace.get(match.group(0)) if match.group(0)[0] not in "'\"" else None
        return inspect.formatannotation(value) if typing.get_origin(value) is typing.Literal else match.group(0)

    return _NAME_OR_QUOTED.sub(expand, text)


def _knob_parameters(factory: Callable[..., Any]) -> list[inspect.Parameter]:
    """Keyword parameters a user may set: all of a class's __init__, all but the first of a function."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    params = params[1:]  # drop ``self`` (class) or ``ctx`` (function)
    return [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def knob_specs(factory: Callable[..., Any]) -> list[KnobSpec]:
    """The knobs of ``factory`` with their annotations (source text, ``Literal`` aliases written out) and defaults."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    return [
        KnobSpec(
            p.name,
            _annotation_text(p.annotation, namespace),
            REQUIRED if p.default is inspect.Parameter.empty else p.default,
        )
        for p in _knob_parameters(factory)
    ]


_TYPE_NAMES: dict[str, Any] = {
    name: getattr(typing, name) for name in ("Any", "Literal", "Optional", "Union", "Sequence", "Mapping")
}
_TYPE_NAMES.update({t.__name__: t for t in (int, float, str, bool, list, tuple, dict, set, frozenset, bytes)})
_TYPE_NAMES["None"] = None


@functools.lru_cache(maxsize=None)
def _adapter(annotation: str) -> Any:
    """A pydantic TypeAdapter for a knob annotation, or None when it names types beyond the basics.

    Annotations are source text of rlvr's own (or the user's plug-in) signatures, resolved against
    builtin and ``typing`` names only; anything else (a torch type, a user class) is not checked.
    """
    from pydantic import TypeAdapter

    try:
        resolved = eval(annotation, {"__builtins__": {}}, _TYPE_NAMES)  # noqa: S307 - signature text, fixed namespace
        return TypeAdapter(resolved)
    except Exception:
        return None


def _describe(error: dict[str, Any]) -> str:
    msg = error["msg"]
    if error["type"] == "literal_error":
        return msg.replace("Input should be ", "expected ")
    return msg.replace("Input should be", "expected")


def validate_knobs(stage: str, name: str, specs: list[KnobSpec], knobs: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``knobs`` checked against ``specs``: names, required ones, and value types; returns the coerced values.

    Raises ConfigError naming ``where.<knob>`` and what it accepts.
    """
    from pydantic import ValidationError

    by_name = {s.name: s for s in specs}
    prefix = f"{where}: " if where else ""
    for key in knobs:
        if key not in by_name:
            valid = ", ".join(sorted(by_name)) or "(none)"
            raise ConfigError(f"{prefix}{stage} '{name}' has no knob '{key}'; valid knobs: {valid}")
    for spec in specs:
        if spec.required and spec.name not in knobs:
            raise ConfigError(f"{prefix}{stage} '{name}' needs knob '{spec.name}'")
    out = dict(knobs)
    for key, value in knobs.items():
        adapter = _adapter(by_name[key].annotation)
        if adapter is None:
            continue
        try:
            out[key] = adapter.validate_python(value)
        except ValidationError as exc:
            dotted = f"{where} {key}" if where.startswith("-") else f"{where}.{key}" if where else key
            reason = "; ".join(_describe(e) for e in exc.errors()[:2])
            raise ConfigError(
                f"{dotted}: {reason} (got {value!r}); {stage} '{name}' takes {key}: {by_name[key].annotation}"
            ) from None
    return out


@functools.lru_cache(maxsize=1)
def builtin_catalog() -> dict[str, Any]:
    """The generated description of the built-in methods (``rlvr/catalog.json``)."""
    if not CATALOG_FILE.is_file():
        return {"stages": {}}
    return json.loads(CATALOG_FILE.read_text())


@dataclass(frozen=True)
class Entry:
    """One registered method: its factory and the context fields it reads."""

    name: str
    factory: Callable[..., Any]
    requires: frozenset[str] = field(default_factory=frozenset)
    doc: str = ""

    def knob_specs(self) -> list[KnobSpec]:
        return knob_specs(self.factory)

    def knob_defaults(self) -> dict[str, Any]:
        """Keyword knobs the factory accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
        return {p.name: p.default for p in _knob_parameters(self.factory)}


class Registry:
    """Name -> method table of one pipeline stage (or of the tasks, ``rlvr.tasks.base.tasks``)."""

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

    def _catalog(self) -> dict[str, Any]:
        return builtin_catalog()["stages"].get(self.stage, {})

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that replace a method)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises with the list of valid names."""
        self._load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise self._unknown(name) from None

    def _unknown(self, name: str) -> UnknownNameError:
        names = sorted(set(self._entries) | set(self._catalog()))
        valid = ", ".join(names) or "(none registered)"
        return UnknownNameError(f"unknown {self.stage} '{name}'; valid names: {valid}")

    def get(self, name: str) -> Callable[..., Any]:
        """The raw factory registered under ``name``."""
        return self.entry(name).factory

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def specs(self, name: str) -> list[KnobSpec]:
        """The knobs of ``name``: from the live entry if registered, else from the built-in catalog.

        The catalog path imports nothing, so a config is checked before torch is loaded.
        """
        entry = self._entries.get(name)
        if entry is not None:
            return entry.knob_specs()
        described = self._catalog().get(name)
        if described is not None:
            return [KnobSpec(**k) for k in described["knobs"]]
        raise self._unknown(name)

    def check_knobs(self, name: str, knobs: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Raise ConfigError for an unknown or missing knob or a value of the wrong type; returns the
        values coerced to the knobs' types."""
        return validate_knobs(self.stage, name, self.specs(name), knobs, where)

    def build(self, name: str, knobs: dict[str, Any] | None = None, where: str = "") -> "Component":
        """A ready component: a class instance, or the function with its knobs bound."""
        entry = self.entry(name)
        knobs = self.check_knobs(name, dict(knobs or {}), where)
        if inspect.isclass(entry.factory):
            obj = entry.factory(**knobs)
        else:
            obj = functools.partial(entry.factory, **knobs)
        return Component(name=name, stage=self.stage, fn=obj, requires=entry.requires, knobs=knobs)

    def describe(self) -> dict[str, Any]:
        """Catalog entries of the built-in (``rlvr.*``) methods: module, reads, knobs, summary."""
        out: dict[str, Any] = {}
        for name in self.names():
            entry = self._entries[name]
            if not entry.factory.__module__.startswith("rlvr."):
                continue
            out[name] = {
                "module": entry.factory.__module__,
                "requires": sorted(entry.requires),
                "summary": entry.doc.splitlines()[0] if entry.doc else "",
                "knobs": [
                    {"name": s.name, "annotation": s.annotation, "default": _jsonable_default(s.default)}
                    for s in entry.knob_specs()
                ],
            }
        return out


def _jsonable_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable_default(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_jsonable_default(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable_default(v) for k, v in value.items()}
    return repr(value)


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


ALGO_STAGES = ("advantage", "policy_loss", "regularizer", "token_weight", "reward", "controller")
"""The pipeline stages, in the order ``rlvr methods`` lists them."""

REGISTRIES: dict[str, Registry] = {stage: Registry(stage) for stage in ALGO_STAGES}
"""One registry per algorithm stage; the built-ins live in ``rlvr.algos`` (imported on first lookup)."""


def generate_catalog() -> dict[str, Any]:
    """The content of ``rlvr/catalog.json`` from the live registries (imports every built-in)."""
    from rlvr.algos.aggregation import AGG_MODES

    stages = {stage: registry.describe() for stage, registry in REGISTRIES.items()}
    return {"generated_by": "rlvr methods --catalog", "agg_modes": list(AGG_MODES), "stages": stages}


def catalog_json() -> str:
    return json.dumps(generate_catalog(), indent=1, sort_keys=True) + "\n"
