"""What each page of the app shows once it has rendered, for the browser tests and the
first-visit benchmark: (sidebar title, url path, a text on the page, charts expected), in the
sidebar's order."""

from __future__ import annotations

PAGES = (
    ("Overview", "", "Task-vector geometry", 3),
    ("Spectra", "spectra", "Common fraction of Iso-CTS", 2),
    ("Alignment", "alignment", "Does alignment predict accuracy?", 3),
    ("Common subspace", "common_subspace", "Rank ratio ρ (CART)", 2),
    ("Merge & export", "merge_export", "Download", 1),
    ("Learn", "learn", "Task matrices and their spectra", 14),
)
