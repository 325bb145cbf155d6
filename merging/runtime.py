"""Process-wide settings that belong to an entry point (the CLIs, the app, the benchmarks), never
to a library import: importing ``merging`` changes nothing about the process.

``bounded_heap``: a long-running server returns freed tensor memory to the system. glibc raises
its mmap threshold as large blocks are freed, after which model-sized temporaries (a TIES
threshold pass, a layer's projections) come from the heap and stay resident as fragments: on a
ViT-B/32 zoo that kept ~0.5 GB more than the live data. A fixed threshold keeps them mmapped.

``use_huge_pages``: large CPU tensors on transparent huge pages. The spectral methods allocate
many multi-MB temporaries, and on 4 KiB pages their page faults cost 10–20% of an Iso-CTS merge
(docs/engine.md). PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, so an
entry point calls this before any tensor exists; ``THP_MEM_ALLOC_ENABLE=0`` opts out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask PyTorch for transparent huge pages unless the environment already decided."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 4 * 2 ** 20
TRIM_THRESHOLD_BYTES = 64 * 2 ** 20


def bounded_heap() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module doc); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        logging.getLogger(__name__).info("no mallopt here: heap thresholds left as they are")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))

