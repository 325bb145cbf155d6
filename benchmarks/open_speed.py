"""Opening cost of checkpoint folders and files, for two code trees in one run (a ratio).

    python benchmarks/open_speed.py --write /tmp/open-speed          # replicas + a ViT-L/14 file
    python benchmarks/open_speed.py --dir /tmp/open-speed --root A --root B

``--write`` writes the published-release replicas of tests/zoo/replicas.py (task_vectors zip and
legacy pickled modules, TALL-masks state dicts with pickled heads, a Hugging Face hub cache) and
one real-size ViT-L/14 visual tower saved as task_vectors does (``torch.save`` of the module,
1.2 GB). ``--dir`` times, for each code tree ``--root`` (e.g. the main checkout and a branch),
opening every replica folder and reading all its tensors (median of 5 in a process, median of
``--rounds`` processes), opening the ViT-L/14
file (parsing only), and opening a 20-file ViT-L/14 release (``vit_l14_x20``: hard links of that
file; parsing and the header checks, no tensor read). Each measurement runs in a fresh
process per root, alternating (the order reversed every round), so both see the same machine state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TIMER = """
import sys, time, json, statistics
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from zoo.folders import open_folder
from merging.io import open_checkpoint
target, kind = Path(sys.argv[2]), sys.argv[3]
def once():
    t = time.perf_counter()
    if kind in ("folder", "open"):
        zoo = open_folder(target, pretrained=target / "theta0.safetensors" if (target / "theta0.safetensors").exists() else None)
        for view in [zoo.pretrained(), *(zoo.finetuned(t) for t in zoo.tasks)] if kind == "folder" else []:
            dict(view.items())
    else:
        open_checkpoint(target)
    return time.perf_counter() - t
once()  # warm caches and the parser helper
print(json.dumps(statistics.median(once() for _ in range(5))))
"""


def write(out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import torch
    from open_clip.transformer import VisionTransformer

    from merging.io import save_safetensors
    from tests.zoo import replicas as R

    base = R.tower(0)
    models = {"": base, **{t: R.moved(base, i + 1) for i, t in enumerate(("MNIST", "SVHN", "DTD"))}}
    text = R.text_tower(5)
    R.write_task_vectors(out / "task_vectors", models, text)
    R.write_task_vectors(out / "task_vectors_legacy", models, text, legacy=True)
    tall = R.write_tall_masks(out / "tall_masks", {k: v for k, v in models.items() if k}, text)
    save_safetensors(R.encoder_state(base, text, keep_lang=False), tall / "theta0.safetensors")
    R.write_hf_hub(out / "hf_hub", models, text, bare=False)
    torch.manual_seed(0)
    vitl = VisionTransformer(image_size=224, patch_size=14, width=1024, layers=24, heads=16, mlp_ratio=4.0,
                             output_dim=768)
    torch.save(vitl, out / "vit_l14_finetuned.pt")
    link_release(out)


def link_release(out: Path) -> None:
    """A 20-file ViT-L/14 release in the plain layout, as hard links of the one real-size file
    (opening parses each name; 24 GB of copies would measure the same)."""
    folder = out / "vit_l14_x20"
    folder.mkdir(exist_ok=True)
    for name in ["pretrained", *(f"task{k:02d}" for k in range(19))]:
        if not (folder / f"{name}.pt").exists():
            (folder / f"{name}.pt").hardlink_to(out / "vit_l14_finetuned.pt")


def measure(folder: Path, roots: list[str], rounds: int = 5) -> dict:
    targets = {p.name: (p, "open" if p.name == "vit_l14_x20" else "folder") for p in sorted(folder.iterdir())
               if p.is_dir()}
    targets["ViT-L/14 file (open only)"] = (folder / "vit_l14_finetuned.pt", "file")
    results = {}
    for name, (path, kind) in targets.items():
        target = path / "ViT-T-8" if (path / "ViT-T-8").is_dir() else path
        if name == "tall_masks":
            target = path
        runs: dict[str, list[float]] = {root: [] for root in roots}
        for round_ in range(rounds):  # a fresh process per root and round, the order reversed every round
            for root in roots if round_ % 2 == 0 else roots[::-1]:
                runs[root].append(json.loads(subprocess.run([sys.executable, "-c", TIMER, root, str(target), kind],
                                                            capture_output=True, text=True, check=True).stdout))
        results[name] = {root: statistics.median(times) for root, times in runs.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--root", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=5, help="processes per root (median)")
    args = parser.parse_args()
    if args.write:
        write(args.write)
    if args.dir:
        results = measure(args.dir, args.root or [str(HERE)], args.rounds)
        for name, times in results.items():
            first = next(iter(times.values()))
            print(f"{name:28s} " + "  ".join(f"{Path(r).name}: {t * 1000:8.1f} ms ({t / first:.2f}×)"
                                             for r, t in times.items()))


if __name__ == "__main__":
    main()
