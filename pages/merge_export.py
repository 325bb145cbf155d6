"""📦 Merge & export view (see the explanation shown at the top of the page)."""

from __future__ import annotations

from ui.models import current_zoo
from ui.page import header

header("📦 Merge & export", "Merge with the method, parameters and α chosen in the sidebar, check the result task by task against the pretrained model (zero-shot) and the fine-tuned experts, then download the merged encoder as safetensors and the tables as CSV. Normalized accuracy is merged ÷ fine-tuned: 100% means the merge lost nothing on that task.")
zoo = current_zoo()
