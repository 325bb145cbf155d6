"""🎚️ Common subspace view (see the explanation shown at the top of the page)."""

from __future__ import annotations

from ui.models import current_zoo
from ui.page import header

header("🎚️ Common subspace", "Accuracy as the size of the common subspace moves. Left: Iso-CTS against its common fraction (1 = Iso-C, smaller leaves more room for task-specific directions); right: CART against its rank ratio (the rank kept for each centred task vector). Thin lines are tasks, the thick line is their average; the ringed point is the value under the slider. α is chosen on validation at every point, or fixed from the sidebar. Sweeps are computed once, stored on disk, and return instantly on the next visit.")
zoo = current_zoo()
