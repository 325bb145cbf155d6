"""The method registry: one entry per method, carrying its display name, paper link and a
typed parameter schema. The CLI's ``methods`` command and the app's sidebar are built from it.

Each method lives in its own module under ``merging/methods/`` and registers itself with
``register(Method(...))``; importing ``merging.methods`` fills ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from merging.errors import MethodError


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method: what the sidebar turns into a slider."""

    name: str
    default: float
    low: float
    high: float
    step: float
    help: str
    kind: type = float  # float or int
    label: str = ""  # display label; defaults to the name

    def validate(self, value: Any) -> float | int:
        """Coerce ``value`` to ``kind`` and check the range; raise MethodError otherwise."""
        try:
            number = self.kind(float(value)) if self.kind is int else float(value)
        except (TypeError, ValueError) as err:
            raise MethodError(f"parameter {self.name}={value!r} is not a number") from err
        if not (self.low <= number <= self.high):
            raise MethodError(f"parameter {self.name}={number} is outside [{self.low}, {self.high}]")
        return number


@dataclass(frozen=True)
class FixedAlpha:
    """α fixed by the method itself, as a function of the number of tasks T."""

    rule: Callable[[int], float]
    label: str  # how the rule reads in the UI and CLI, e.g. "1/T"


@dataclass(frozen=True)
class Method:
    """A registered merge method. ``fn`` is the engine entry point (see merging/methods)."""

    name: str
    display_name: str
    paper_url: str
    summary: str
    fn: Callable[..., Any]
    params: tuple[Param, ...] = ()
    fixed_alpha: FixedAlpha | None = None  # e.g. weight averaging (1/T); None means α is free
    spectral: bool = False  # acts on task matrices through SVDs
    extra: Mapping[str, Any] = field(default_factory=dict)

    def alpha_for(self, num_tasks: int) -> float | None:
        """The α this method fixes for ``num_tasks`` tasks, or None when α is free."""
        return None if self.fixed_alpha is None else float(self.fixed_alpha.rule(num_tasks))

    def defaults(self) -> dict[str, float | int]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, float | int]:
        """Defaults overridden by ``params``; unknown names and out-of-range values raise."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params or {}) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise MethodError(f"method {self.name} has no parameter {unknown[0]!r} (parameters: {allowed})")
        values = self.defaults()
        values.update({k: known[k].validate(v) for k, v in (params or {}).items()})
        return values


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name} registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    import merging.methods  # noqa: F401  (fills METHODS)

    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


def all_methods() -> dict[str, Method]:
    import merging.methods  # noqa: F401

    return dict(METHODS)
