"""🗂️ Overview view (see the explanation shown at the top of the page)."""

from __future__ import annotations

from ui.models import current_zoo
from ui.page import header

header("🗂️ Overview", "The zoo at a glance: which tasks there are, how well the pretrained model (zero-shot) and each fine-tuned model do on them, and how big and how similar the task vectors are. Read the accuracy bars as the two ends of the range any merge lands in: zero-shot is the floor, fine-tuned the ceiling. Large norms mean fine-tuning moved the weights far; a cosine similarity near 0 means two tasks changed the weights in unrelated directions (the usual case), which is why plain sums interfere less than one might fear, and why what matters is the spectrum (next view).")
zoo = current_zoo()
