"""The progress-callback convention shared by every long-running core function.

A callback receives the fraction done (0..1) and a short message. The Streamlit shell wraps
``st.progress``; the CLIs log; ``None`` means silent.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]


def silent(_fraction: float, _message: str) -> None:
    """A callback that ignores its arguments."""


def scaled(progress: Progress | None, start: float, stop: float) -> Progress:
    """A callback mapping 0..1 onto [start, stop] of ``progress`` (for nested steps)."""
    outer = progress or silent
    return lambda fraction, message: outer(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)
