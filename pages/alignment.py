"""🧭 Alignment view (see the explanation shown at the top of the page)."""

from __future__ import annotations

from ui.models import current_zoo
from ui.page import header

header("🧭 Alignment", "How much of each task survives the merge, measured by the Subspace Alignment Ratio (SAR): the share of a task matrix's norm that lies in the span of the merged matrix's dominant directions (those that hold all but ε of its energy). The heatmap shows SAR for every task (rows) and layer (columns) for the method in the sidebar: brighter is better aligned. The bars compare SAR averaged over layers across methods, and the scatter tests the paper's claim that tasks with higher alignment keep more of their accuracy (NAI), with a least-squares line and Pearson's r.")
zoo = current_zoo()
