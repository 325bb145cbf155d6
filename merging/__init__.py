"""Isoscope's merge engine: checkpoint IO, task vectors, linear algebra and one file per method.

Pure library code: imports torch, numpy and safetensors only (never streamlit).
"""

import os

# Large CPU tensors on transparent huge pages: the spectral methods allocate many multi-MB
# temporaries, and on 4 KiB pages their page faults cost 10–20% of an Iso-CTS merge
# (docs/engine.md). PyTorch reads this once, at its first allocation, so it takes effect
# when merging is imported before torch allocates; set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
