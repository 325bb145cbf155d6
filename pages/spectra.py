"""📉 Spectra view (see the explanation shown at the top of the page)."""

from __future__ import annotations

from ui.models import current_zoo
from ui.page import header

header("📉 Spectra", "Singular values of one layer's matrices, largest first, on a log scale. Grey lines: the task matrices Δt; dark: their Task Arithmetic sum (before flattening); coloured: the merged matrices of Iso-C, Iso-CTS, TSV-M and CART (after). A steep curve means a few directions dominate (tasks with weak, specific directions get drowned); a flat curve means every direction gets the same weight. The right chart shows cumulative energy (share of ‖Δ‖F² in the top-k directions). The common-fraction slider moves the Iso-CTS boundary between the common subspace (left) and the task-specific slots (right).")
zoo = current_zoo()
