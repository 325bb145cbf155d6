"""Headless analysis CLI (a thin shell over ``analysis.report``):

    python -m analysis report --zoo digits --out DIR
    python -m analysis report --zoo PATH --data DATA [--trust-pickle] --out DIR
    python -m analysis sweep --zoo Z --method iso_cts --param common_fraction=0:1:0.1 [--alpha A]
    python -m analysis sweep --zoo Z --method cart --param rank_ratio=0.02:0.5:0.02

A sweep writes every point into the same resumable result store the app's Common subspace view
reads, so a GPU server can fill the store and the app then shows the curves at once (sweeps
killed half way resume where they stopped).

Progress is logged to stderr; the summary table goes to stdout. Input the user can fix
(unknown zoo, unreadable checkpoint, bad method name, missing data) exits with status 2 and
one readable line.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from analysis.k_rules import DEFAULT_RULE, K_RULES, rule_value
from merging.errors import TRUST_PICKLE_HELP, IsoscopeError
from merging.progress import Progress
from merging.runtime import use_huge_pages

# --points choices → labels of analysis.correlation.POINT_SETS (kept literal: imported lazily)
POINTS = {"fig3a": "Fig. 3a: Task Arithmetic and Iso-C", "six": "six methods: TA, TIES, TSV-M, Iso-C, Iso-CTS, CART",
          "all": "all registered methods (the six and weight averaging)"}

if TYPE_CHECKING:
    from analysis.evaluation import Evaluator

log = logging.getLogger("analysis")


def _logging_progress(name: str, every: float = 5.0) -> Progress:
    """A callback logging changed messages, at most one repeated message per ``every`` seconds."""
    last = {"message": "", "time": 0.0}

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if message != last["message"] or now - last["time"] >= every:
            logging.getLogger(name).info("[%3.0f%%] %s", 100 * fraction, message)
            last.update(message=message, time=now)

    return report


def _report(args: argparse.Namespace) -> int:
    from analysis.report import build_report, format_summary, write_report
    from merging.registry import get_method

    methods = [get_method(m.strip()).name for m in args.methods.split(",")] if args.methods else None
    start = time.perf_counter()
    ev = _evaluator(args)
    value = getattr(args, K_RULES[args.k_rule].cli_flag.lstrip("-"))
    rep = build_report(ev, methods, eps=value, progress=_logging_progress("report"), rule=args.k_rule,
                       point_set=POINTS[args.points])
    json_path, html_path = write_report(rep, args.out)
    print(format_summary(rep))
    log.info("wrote %s and %s in %.1f s (%d model×task evaluations, the rest from the store %s)",
             json_path, html_path, time.perf_counter() - start, ev.evaluations, ev.store.path)
    return 0


def parse_values(spec: str) -> tuple[str, list[float]]:
    """``name=start:stop:step`` (stop included) or ``name=v1,v2,…`` -> (name, values)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise IsoscopeError(f"--param {spec!r}: write name=start:stop:step or name=v1,v2,...")
    try:
        if ":" in rest:
            start, stop, step = (float(x) for x in rest.split(":"))
            if step <= 0 or stop < start:
                raise ValueError("the step must be positive and stop ≥ start")
            count = int(round((stop - start) / step))
            values = [round(start + i * step, 6) for i in range(count + 1) if start + i * step <= stop + 1e-9]
        else:
            values = [float(x) for x in rest.split(",")]
    except ValueError as err:
        raise IsoscopeError(f"--param {spec!r}: {err}") from None
    return name.strip(), values


def _sweep(args: argparse.Namespace) -> int:
    from analysis.sweeps import param_sweep, sweep_average
    from merging.registry import get_method

    method = get_method(args.method)
    param, values = parse_values(args.param)
    for value in values:  # every value checked against the method's schema before any work
        method.resolve({param: value})
    start = time.perf_counter()
    ev = _evaluator(args)
    zoo = ev.zoo
    table = param_sweep(ev, method.name, param, values, alpha=args.alpha, progress=_logging_progress("sweep"))
    test = sweep_average(table)
    test = test[test["split"] == "test"]
    print(f"{method.display_name} on {zoo.name}: mean test accuracy per {param}")
    for row in test.itertuples():
        print(f"  {param} = {row.value:<6g} α = {row.alpha:<5g} accuracy {100 * row.accuracy:5.1f}%"
              f"{_plus_minus(getattr(row, 'se', math.nan))}  normalized {100 * row.normalized:5.1f}%")
    if zoo.max_images:
        print(f"  (± one binomial standard error: at most {zoo.max_images} images per task and split, "
              f"a stratified sample)")
    log.info("%d points in %.1f s (%d model×task evaluations, the rest from the store %s)",
             len(values), time.perf_counter() - start, ev.evaluations, ev.store.path)
    return 0


def _plus_minus(se: float) -> str:
    """`` ± x.x%`` for a sampled accuracy's standard error, empty for a full split (NaN)."""
    return f" ± {100 * se:.1f}%" if math.isfinite(se) else ""


def _budget(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of images")
    return value


def _rule_value(rule: str) -> Callable[[str], float]:
    """An argparse type for ``rule``'s value, checked against its range in ``K_RULES``."""
    def parse(text: str) -> float:
        try:
            return rule_value(rule, float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is not in {K_RULES[rule].interval}") from None
    return parse


def _zoo_arguments(p: argparse.ArgumentParser) -> None:
    """The options every command shares: which zoo, its data and θ0, trust, device, store, threads."""
    p.add_argument("--zoo", default="digits", help="digits (default), digits-tiny, or a checkpoint folder")
    p.add_argument("--data", default=None, help="evaluation data folder for a checkpoint folder")
    p.add_argument("--pretrained", default=None,
                   help="θ0's checkpoint file, for a release without a zero-shot model (TALL-masks)")
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--store", default=None, help="result store file (default: $ISOSCOPE_CACHE/results.sqlite)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--max-images", type=_budget, default=None, metavar="N",
                   help="quick mode: score a stratified sample (fixed seed) of at most N images per task and "
                        "split; accuracies then carry their binomial standard error (default: every image)")


def _evaluator(args: argparse.Namespace) -> Evaluator:
    """The Evaluator over the zoo the shared options name (torch threads set first)."""
    import torch

    from analysis.evaluation import Evaluator
    from analysis.store import ResultStore
    from zoo import load_zoo

    torch.set_num_threads(args.threads)
    options = {"pretrained": args.pretrained} if args.pretrained else {}
    options |= {"max_images": args.max_images} if args.max_images else {}
    zoo = load_zoo(args.zoo, data=args.data, trust_pickle=args.trust_pickle, device=args.device,
                   progress=_logging_progress("zoo"), **options)
    return Evaluator(zoo, store=ResultStore(args.store) if args.store else None, device=args.device)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description="Isoscope analysis (headless).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="evaluate every registered method; write results.json and report.html")
    r.add_argument("--out", required=True, help="output folder for results.json and report.html")
    r.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    r.add_argument("--k-rule", choices=tuple(K_RULES), default=DEFAULT_RULE,
                   help="how SAR picks k_M: " + "; ".join(f"'{s.name}', {s.label} with {s.cli_flag}"
                                                          for s in K_RULES.values()) + f" (default {DEFAULT_RULE})")
    for spec in K_RULES.values():
        r.add_argument(spec.cli_flag, type=_rule_value(spec.name), default=spec.default,
                       help=f"the {spec.name} rule's value in {spec.interval}: {spec.value_label} "
                            f"(default {spec.default:g})")
    r.add_argument("--points", choices=tuple(POINTS), default="fig3a",
                   help="methods pooled in the SAR–NAI correlation: fig3a (TA and Iso-C, default), six, or all "
                        "(every registered method)")
    _zoo_arguments(r)
    r.set_defaults(run=_report)
    w = sub.add_parser("sweep", help="accuracy as one parameter moves, into the result store the app reads")
    w.add_argument("--method", required=True, help="method name, e.g. iso_cts or cart")
    w.add_argument("--param", required=True, help="name=start:stop:step (stop included) or name=v1,v2,...")
    w.add_argument("--alpha", type=float, default=None, help="fixed α (default: chosen on validation at every point)")
    _zoo_arguments(w)
    w.set_defaults(run=_sweep)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    use_huge_pages()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except IsoscopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
