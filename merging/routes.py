"""Which linear-algebra route each merge took, per layer shape: a small log the kernels write to.

The kernels of ``merging.linalg`` pick a route per matrix (docs/engine.md, How it is fast): the
small-side Gram's eigh, Newton's polar iteration, block Krylov, LAPACK's subset eigensolver, a
full eigh, or the full SVD (and its fallbacks). A slow route on a realistic spectrum is the
first thing to look for when a merge is slower than expected, so each kernel calls ``taken``
with its route's name, and a caller that wants to know wraps its work in ``recording()``:

    with recording() as log:
        merger.merged("tsv_m")
    log.summary()   # {"2304x768": {"gram eigh": 8, "subset eigh": 8, ...}, ...}

The layer shape comes from ``layer(shape)``, which the engine enters around each per-key method
call (``merging.merge``). Outside ``recording()`` a call to ``taken`` costs one context-variable
read. Context variables keep concurrent sessions (threads) apart.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)

# Route names, as the kernels report them.
GRAM_EIGH = "gram eigh"  # one eigh of the small-side Gram (fast_svd, the Gram polar)
GRAM_TOP = "gram top-k"  # top-k triplets from the small-side Gram (top_svd)
NEWTON = "newton polar"  # the scaled Newton iteration on a square matrix
KRYLOV = "krylov"  # block Krylov top eigenpairs, accepted
SUBSET_EIGH = "subset eigh"  # LAPACK's subset eigensolver (syevr)
FULL_EIGH = "full eigh"  # torch.linalg.eigh of the whole matrix, for its top eigenpairs
FULL_SVD = "full svd"  # LAPACK's SVD (a fallback kernel's name is appended when it answered)
POLAR_EXTENDED = "polar extended"  # polar([orthonormal | extra]) through one small eigh

_RECORDER: ContextVar[Counter | None] = ContextVar("isoscope_routes", default=None)
_LAYER: ContextVar[str] = ContextVar("isoscope_route_layer", default="?")


def shape_name(shape: Sequence[int]) -> str:
    """'2304x768' for a (2304, 768) layer."""
    return "x".join(str(int(d)) for d in shape)


def taken(route: str) -> None:
    """Count ``route`` for the current layer, when a ``recording()`` is active."""
    counts = _RECORDER.get()
    if counts is not None:
        counts[(_LAYER.get(), route)] += 1
        log.debug("route %s on layer %s", route, _LAYER.get())


class RouteLog:
    """The routes counted during one ``recording()`` block."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def summary(self) -> dict[str, dict[str, int]]:
        """{layer shape: {route: count}}, shapes and routes sorted."""
        out: dict[str, dict[str, int]] = {}
        for (shape, route), count in sorted(self.counts.items()):
            out.setdefault(shape, {})[route] = count
        return out


@contextmanager
def recording() -> Iterator[RouteLog]:
    """Count every route taken in this context until the block ends."""
    routes = RouteLog()
    token = _RECORDER.set(routes.counts)
    try:
        yield routes
    finally:
        _RECORDER.reset(token)


@contextmanager
def layer(shape: Sequence[int]) -> Iterator[None]:
    """Attribute the routes taken inside the block to a layer of ``shape``."""
    token = _LAYER.set(shape_name(shape))
    try:
        yield
    finally:
        _LAYER.reset(token)
