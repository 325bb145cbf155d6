"""Zoo CLI (a thin shell):

    python -m zoo build [--name digits] [--out assets/zoo]   build (or reuse from the cache) and copy
    python -m zoo info  [--name digits]                      tasks, sizes and the fingerprint
    python -m zoo table --report reports/digits/results.json  per-task markdown table of a report
    python -m zoo convert --folder F --out O [--pretrained P] [--trust-pickle]
                                                             write any zoo folder once as plain
                                                             safetensors, atomically (no pickles left)

``build --out assets/zoo`` reproduces the shipped ``assets/zoo/digits.safetensors``; the method
table of docs/zoo.md comes from ``python -m analysis report --zoo digits``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from merging.errors import TRUST_PICKLE_HELP, IsoscopeError
from merging.runtime import use_huge_pages
from zoo import digits as D

log = logging.getLogger("zoo")


def _progress(every: float = 5.0):
    last = {"t": 0.0}

    def report(fraction: float, message: str) -> None:
        if time.monotonic() - last["t"] >= every or fraction >= 1.0:
            log.info("[%3.0f%%] %s", 100 * fraction, message)
            last["t"] = time.monotonic()

    return report


def _build(args: argparse.Namespace) -> int:
    recipe = D.RECIPES[args.name]
    fp = D.fingerprint_of(recipe)
    built = D.cache_dir() / f"{args.name}-{fp}.safetensors"
    if not built.is_file():
        D.build(recipe, built, _progress())
    if args.out:
        target = Path(args.out) / f"{args.name}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(built, tmp)
        tmp.replace(target)
        built = target
    print(f"{built}  fingerprint {fp}  {built.stat().st_size / 2**20:.1f} MiB")
    return 0


def _info(args: argparse.Namespace) -> int:
    zoo = D.load_digits_zoo(args.name, progress=_progress())
    print(f"{zoo.name}  fingerprint {zoo.fingerprint}  file {zoo.path}")
    for task in zoo.tasks:
        info = zoo.task_info(task)
        print(f"  {task:10s} {info['num_classes']:2d} classes  {info['description']}")
    return 0


def _row(name: str, acc: dict[str, float], ft: dict[str, float], tasks: list[str], alpha: str) -> str:
    cells = [f"{100 * acc[t]:.1f}" for t in tasks]
    mean = sum(acc[t] for t in tasks) / len(tasks)
    norm = sum(acc[t] / ft[t] for t in tasks) / len(tasks)
    return f"| {name} | {alpha} | " + " | ".join(cells) + f" | **{100 * mean:.1f}** | {100 * norm:.1f} |"


def markdown_table(results: dict) -> str:
    """Per-task test accuracy (%) of a report's results.json, with means (absolute, normalized)."""
    tasks, ft = results["tasks"], results["finetuned"]
    head = ["| method | α | " + " | ".join(tasks) + " | mean | normalized |",
            "|---|---|" + "---|" * len(tasks) + "---|---|"]
    rows = [_row("zero-shot", results["zero_shot"], ft, tasks, "–"), _row("fine-tuned", ft, ft, tasks, "–")]
    rows += [_row(name, e["test_acc"], ft, tasks, f"{e['alpha']:g}") for name, e in results["methods"].items()]
    return "\n".join(head + rows)


def _table(args: argparse.Namespace) -> int:
    import json

    print(markdown_table(json.loads(Path(args.report).read_text())))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from zoo.folders import convert_folder

    if not args.folder or not args.out:
        raise IsoscopeError("convert needs --folder (the zoo folder) and --out (a new folder)")
    out = convert_folder(args.folder, args.out, trust_pickle=args.trust_pickle, progress=_progress(every=0.0),
                         pretrained=args.pretrained)
    print(f"{out}  (open it from now on; no trust needed)")
    return 0


COMMANDS = {"build": _build, "info": _info, "table": _table, "convert": _convert}


def main(argv: Sequence[str] | None = None) -> int:
    use_huge_pages()
    parser = argparse.ArgumentParser(prog="python -m zoo", description="Build and inspect the digits zoo; convert zoo folders.")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--name", default="digits", choices=sorted(D.RECIPES))
    parser.add_argument("--out", default=None,
                        help="build: folder to copy the built zoo file into (e.g. assets/zoo); convert: the new folder")
    parser.add_argument("--report", default="reports/digits/results.json", help="table: a report's results.json")
    parser.add_argument("--folder", default=None, help="convert: the zoo folder to convert")
    parser.add_argument("--trust-pickle", action="store_true",
                        help=TRUST_PICKLE_HELP)
    parser.add_argument("--pretrained", default=None,
                        help="convert: θ0's file, for a release without a zero-shot model (TALL-masks)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except IsoscopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
