"""The method registry: one typed entry per method. Everything that lists or draws methods is
built from it: the CLI's ``methods`` command, the app's sidebar (one widget per ``Param``), the
pages' method lists (``spectral`` methods on Spectra, ``Param.sweep`` on Common subspace), the
report, and the house colours (``Method.color``).

Each method lives in its own module under ``merging/methods/`` and registers itself with
``register(Method(...))``; importing ``merging.methods`` fills ``METHODS``.
docs/adding_a_method.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from merging.errors import MethodError

# prepare(task_vector_of, num_tasks, params) -> values shared by every layer of one merge
# (``Layer.shared``); task_vector_of(t) gives τt over every key, one task at a time.
Prepare = Callable[[Callable[[int], Mapping[str, Any]], int, Mapping[str, float]], Mapping[str, Any]]
# What Δ is added to: θ0, or the weight average θavg = θ0 + mean(τt) (CART).
Base = Literal["pretrained", "average"]
# factors(layer, params) -> (U (m, r'), σ (r',)): the left singular vectors and values of one
# matrix key's Δ, for methods that build Δ from orthonormal factors (so no SVD of Δ is needed)
Factors = Callable[[Any, Mapping[str, float]], tuple[Any, Any]]
# spectrum(layer, params) -> σ (r',): one matrix key's singular values of Δ without building Δ
Spectrum = Callable[[Any, Mapping[str, float]], Any]
# sum_basis(σ(S) (r,), T) -> σ(ΔM) (r,): for a method whose ΔM on a matrix key is written in the
# left singular vectors of S = Σt Δt, in their order; ΔM at α = 1, or at the method's fixed α
SumBasis = Callable[[Any, int], Any]


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
    sweep: tuple[float, ...] = ()  # values the Common-subspace view sweeps (none: not swept)

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
    """A registered merge method.

    ``fn(layer, params) -> Δ`` is the per-parameter engine entry point (merging/methods/common.py).
    ``spectral``: the method reshapes the singular values of the task matrices (through SVDs),
    so its merged spectrum is worth showing (Spectra view, the report's spectra).
    ``prepare``: a global pass over every task vector before the per-layer ``fn`` (TIES's
    magnitude thresholds); its result reaches ``fn`` as ``layer.shared``.
    ``base``: what Δ is added to. ``fixed_alpha``: an α the method fixes itself (None: α free).
    ``factors``: optional; for a matrix key, Δ's left singular vectors and singular values in the
    method's own order (the analysis reads spectra and SAR from them instead of an SVD of Δ; on a
    flat spectrum that order is the deterministic basis SAR uses). ``spectrum``: optional; Δ's
    singular values alone, cheaper than the factors (no polar factor), for views that draw σ.
    ``sum_basis``: optional; for a method whose ΔM is built on the sum's own left singular vectors
    (Task Arithmetic, weight averaging, Iso-C), the map from σ(Σt Δt) to σ(ΔM). The analysis then
    shares one set of projections on the sum's vectors between all such methods of a layer, and
    it wins over ``factors`` and ``spectrum`` (which must agree with it: the conformance suite
    checks every one of them against an SVD of the engine's update). Such a Δ reads nothing but
    Σt τt (the mean of the τt off the matrices), so a merge streams the sum from the checkpoints
    without holding a key's T task vectors (``Layer.of_sum``).
    ``linear``: Δ is exactly Σt τt on every key (Task Arithmetic, weight averaging), so θ = θ0 + αΔ
    = α Σt θt + (1 − αT) θ0. Where αT = 1 (weight averaging, or Task Arithmetic at α = 1/T) θ0
    drops out, and a whole-model merge forms θ = α Σt θt straight from the checkpoints, without
    reading θ0 or forming the τt (equal to θ0 + αΔ up to the float32 rounding of θ). Other α keep
    θ0 + αΔ: the weighted sum would cancel terms αT times larger than θ.
    ``color``: the method's colour in every figure of the app and the report."""

    name: str
    display_name: str
    paper_url: str
    summary: str
    fn: Callable[..., Any]
    color: str
    params: tuple[Param, ...] = ()
    fixed_alpha: FixedAlpha | None = None
    spectral: bool = False
    prepare: Prepare | None = None
    base: Base = "pretrained"
    factors: Factors | None = None
    spectrum: Spectrum | None = None
    sum_basis: SumBasis | None = None
    linear: bool = False

    def alpha_for(self, num_tasks: int) -> float | None:
        """The α this method fixes for ``num_tasks`` tasks, or None when α is free."""
        return None if self.fixed_alpha is None else float(self.fixed_alpha.rule(num_tasks))

    def swept(self) -> Param | None:
        """The parameter the Common-subspace view sweeps, or None."""
        return next((p for p in self.params if p.sweep), None)

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
    """Add ``method`` to ``METHODS`` (a name registered twice is a programming error)."""
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
    """Every registered method, by name, in registration order."""
    import merging.methods  # noqa: F401

    return dict(METHODS)


def unregister(name: str) -> None:
    """Remove a method (for tests that register a throwaway one)."""
    METHODS.pop(name, None)
