"""The shell's access to the core: errors shown in place, progress bars wired to
``merging.progress`` callbacks, and a bounded process-wide store for
loaded zoos and Mergers (built outside any ``st.cache_*`` function, so a progress bar can show
while they build; never mutated once stored)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import streamlit as st

from merging.errors import CheckpointError, IsoscopeError, MismatchError, MethodError, UntrustedPickleError
from merging.once import OnceCache
from merging.progress import Progress

log = logging.getLogger(__name__)
timing_log = logging.getLogger("ui.timing")  # one line per timed section: the server log's "why is this slow"
T = TypeVar("T")
PROGRESS_DELAY_S = 0.15  # a progress bar appears only for work longer than this
PROGRESS_INTERVAL_S = 0.1  # and is redrawn at most this often

# What the user can do about each kind of error (most specific class first).
HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (UntrustedPickleError, "The code-free reader cannot interpret these pickles, so loading them would run code "
                           "stored in them. Tick **Trust these files** in the sidebar only if you made them or "
                           "trust their source."),
    (CheckpointError, "Check the checkpoint folder in the sidebar: it must hold a pretrained model and one "
                      "fine-tuned model per task in one of the layouts listed under *Supported layouts*."),
    (MismatchError, "Every checkpoint must come from the same architecture as the pretrained model."),
    (MethodError, "Pick another value in the sidebar."),
    (IsoscopeError, "Change the choice in the sidebar and try again."),
)


def hint_for(err: BaseException) -> str:
    return next((h for cls, h in HINTS if isinstance(err, cls)), "")


def show_error(err: BaseException) -> None:
    hint = hint_for(err)
    st.error(f"**{err}**" + (f"\n\n{hint}" if hint else ""), icon=":material/error:")


@contextmanager
def errors_in_place(stop: bool = True) -> Iterator[None]:
    """Show an IsoscopeError where it happened, with what to do; the rest of the app keeps running."""
    try:
        yield
    except IsoscopeError as err:
        log.info("shown to the user: %s", err)
        show_error(err)
        if stop:
            st.stop()


@contextmanager
def progress_bar(label: str) -> Iterator[Progress]:
    """A ``merging.progress.Progress`` callback drawing an ``st.progress`` bar (removed at the end).
    The bar appears once the work has taken PROGRESS_DELAY_S and is redrawn at most every
    PROGRESS_INTERVAL_S, so cache hits (hundreds of instant reports) send nothing to the browser."""
    slot = st.empty()
    start = time.perf_counter()
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - start < PROGRESS_DELAY_S or now - last[0] < PROGRESS_INTERVAL_S:
            return
        last[0] = now
        slot.progress(min(max(float(fraction), 0.0), 1.0), text=f"{label} · {message}" if message else label)

    try:
        yield report
    finally:
        slot.empty()


@st.cache_resource(show_spinner=False)
def _store(kind: str) -> OnceCache:
    return OnceCache(max_entries=3)


def cached(kind: str, key: Any, build: Callable[[], T]) -> T:
    """The object ``build()`` makes for ``(kind, key)``, built once per process."""
    return _store(kind).get(key, build)


def cached_value(kind: str, key: Any) -> Any | None:
    """What ``cached(kind, key, …)`` holds now, or None when nothing was built yet."""
    return _store(kind).peek(key)


TIMINGS_KEY = "iso_timings"  # {section: ms} of the session's last run (benchmarks/app_redraw.py reads it)


@contextmanager
def timed(name: str) -> Iterator[None]:
    """Server-side time of one section of a run (a page, the sidebar, a view's redraw, a zoo opening),
    in ms: kept in ``st.session_state[TIMINGS_KEY]`` for the page's "Timings" expander and logged
    (logger ``ui.timing``, INFO) with the page and a short session id, so the server log answers
    "why is this slow" too."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = (time.perf_counter() - start) * 1000
        st.session_state.setdefault(TIMINGS_KEY, {})[name] = elapsed
        timing_log.info("%s %s: %.0f ms", _session_tag(), name, elapsed)


def _session_tag() -> str:
    """A short, stable tag of the browser session (its id's first characters)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return f"[{ctx.session_id[:8]}]" if ctx is not None else "[-]"


QUIET_KEY = "iso_quiet_run"  # set by a page for one run: no timings expander (a presenter's screen)


def new_run_timings() -> None:
    """Start this run's timings afresh (a fragment's rerun only updates its own entry)."""
    st.session_state[TIMINGS_KEY] = {}
    st.session_state[QUIET_KEY] = False


def quiet_run() -> None:
    """This run shows no timings expander (the timings are still logged)."""
    st.session_state[QUIET_KEY] = True


def show_timings() -> None:
    """The sections of this run, slowest first, in a collapsed expander at the foot of the page."""
    timings = st.session_state.get(TIMINGS_KEY) or {}
    if not timings or st.session_state.get(QUIET_KEY):
        return
    with st.expander(":material/timer: Timings of this run (server side)", expanded=False):
        rows = sorted(timings.items(), key=lambda item: -item[1])
        st.markdown("\n".join(f"- {name}: **{ms:,.0f} ms**" for name, ms in rows))
        st.caption("Each section's wall time on the server; the same lines go to the server log (logger ui.timing). "
                   "Sections nest: a page's total includes the views inside it.")
