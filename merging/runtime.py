"""Process-wide settings that belong to an entry point (the CLIs, the app, the benchmarks), never
to a library import: importing ``merging`` changes nothing about the process.

``bounded_heap``: a long-running server returns freed tensor memory to the system. glibc raises
its mmap threshold as large blocks are freed, after which model-sized temporaries (a TIES
threshold pass, a layer's projections) come from the heap and stay resident as fragments: on a
ViT-B/32 zoo that kept ~0.5 GB more than the live data. A fixed threshold keeps them mmapped.

``use_huge_pages``: large CPU tensors on transparent huge pages, only where that helps. PyTorch
reads ``THP_MEM_ALLOC_ENABLE`` once, at its first CPU allocation, and then ``madvise``s every
large block for huge pages. That changes anything only when the kernel's THP mode is
``madvise`` (under ``always`` every large anonymous mapping gets huge pages anyway, under
``never`` none does), and it pays only when a madvised fault does not stall: with the kernel's
defrag mode ``madvise``, ``defer+madvise`` or ``always``, each such fault may reclaim and compact
memory synchronously. On this 2-core machine (``enabled = madvise``, ``defrag = madvise``, half
the memory in page cache) the switch made a Task Arithmetic merge 3.4× slower and loading 3×
slower (docs/benchmarks.md), so it is set only under ``defrag`` = ``defer`` or ``never``, where
huge pages come only when free ones exist. An entry point calls this before any tensor exists;
a ``THP_MEM_ALLOC_ENABLE`` already in the environment wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage")
NO_STALL_DEFRAG = ("defer", "never")  # defrag modes whose madvised faults never compact synchronously


def kernel_mode(name: str, root: Path = THP_SYSFS) -> str | None:
    """The selected value of a THP setting ("enabled", "defrag"): the bracketed word of
    ``root/name`` ("always [madvise] never" → "madvise"); None where the file is absent."""
    try:
        words = (root / name).read_text().split()
    except OSError:
        return None
    return next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), None)


def huge_pages_help(enabled: str | None, defrag: str | None) -> bool:
    """Whether PyTorch's huge-page switch is worth setting under these kernel modes (module doc)."""
    return enabled == "madvise" and defrag in NO_STALL_DEFRAG


def use_huge_pages(root: Path = THP_SYSFS) -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE`` from the kernel's THP modes unless the environment already
    decided; returns whether huge pages are asked for."""
    if HUGE_PAGES_ENV not in os.environ:
        enabled, defrag = kernel_mode("enabled", root), kernel_mode("defrag", root)
        wanted = huge_pages_help(enabled, defrag)
        os.environ[HUGE_PAGES_ENV] = "1" if wanted else "0"
        logging.getLogger(__name__).info("transparent huge pages %s (kernel: enabled=%s, defrag=%s)",
                                         "asked for" if wanted else "not asked for", enabled, defrag)
    return os.environ[HUGE_PAGES_ENV] == "1"


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

