"""Process-wide settings that belong to an entry point (the CLIs, the app, the benchmarks), never
to a library import: importing ``merging`` changes nothing about the process.

``use_huge_pages``: large CPU tensors on transparent huge pages. The spectral methods allocate
many multi-MB temporaries, and on 4 KiB pages their page faults cost 10–20% of an Iso-CTS merge
(docs/engine.md). PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, so an
entry point calls this before any tensor exists; ``THP_MEM_ALLOC_ENABLE=0`` opts out.
"""

from __future__ import annotations

import os

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask PyTorch for transparent huge pages unless the environment already decided."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")
