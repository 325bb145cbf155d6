"""The published accuracies behind Fig. 3a of Marczak et al., "No Task Left Behind: Isotropic
Model Merging with Common and Task-Specific Subspaces", ICML 2025: ViT-B/16, 8 tasks, the
zero-shot, fine-tuned, Task Arithmetic and Iso-C top-1 test accuracies at each method's optimal
α, as the authors' figure script (iso-merging ``fig_3a.py``) states them. NAI follows from these
facts (``analysis.metrics.nai``). The figure's SAR_avg values come from the checkpoints and are
not published as numbers, so only the NAI side of Fig. 3a can be shown from facts. Also here: the
figure's published correlation within Task Arithmetic (ρ_TA) and Table 1's normalized accuracies.
"""

from __future__ import annotations

import pandas as pd

from analysis.metrics import nai

TASKS = ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN")
ZERO_SHOT = (0.6460639223977117, 0.5212765957446809, 0.5414814814814815, 0.4334125098970705, 0.5179,
             0.6576190476190477, 0.6550125944584383, 0.5198217578365089)
FINETUNED = (0.8761348091033454, 0.9829787234042553, 0.9888888888888889, 0.9900237529691212, 0.9975,
             0.9693650793650793, 0.788110831234257, 0.9782191149354641)
ACCURACY = {  # method (registry name) → accuracy per task, in TASKS order
    "task_arithmetic": (0.6930730008705385, 0.5946808510638298, 0.8492592592592593, 0.7468725257323832, 0.9828,
                        0.7503174603174603, 0.6525944584382871, 0.8393131530424094),
    "iso_c": (0.8343489615719438, 0.9175531914893617, 0.9762962962962963, 0.9535233570863024, 0.9911,
              0.9225396825396825, 0.7402015113350126, 0.9097264904732637),
}
SOURCE = "Marczak et al., ICML 2025, Fig. 3a (ViT-B/16, 8 tasks; accuracies from the authors' fig_3a.py)"


def paper_nai() -> pd.DataFrame:
    """NAI per method × task of Fig. 3a: method, task, accuracy, zero_shot, finetuned, nai."""
    rows = [{"method": m, "task": t, "accuracy": a, "zero_shot": z, "finetuned": f, "nai": float(nai(a, z, f))}
            for m, accs in ACCURACY.items() for t, a, z, f in zip(TASKS, accs, ZERO_SHOT, FINETUNED)]
    return pd.DataFrame(rows)


# The paper's headline numbers the Learn tour sets beside the live ones.
RHO_TA = 0.88  # Fig. 3a: Pearson correlation of SAR_avg and NAI over Task Arithmetic's 8 tasks (ViT-B/16)
TABLE1_NORMALIZED = {  # Table 1, ViT-B/32, 8 tasks: mean normalized accuracy (%) per method
    "task_arithmetic": 76.5, "ties": 81.0, "tsv_m": 92.3, "iso_c": 92.9, "iso_cts": 92.8,
}
TABLE1_SOURCE = "Marczak et al., ICML 2025, Table 1 (ViT-B/32, 8 tasks, normalized accuracy)"
