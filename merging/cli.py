"""Headless merging: ``python -m merging merge|methods|convert`` (a thin shell over
merging.merge and merging.registry).

Contract (later tools depend on it): on any bad usage or bad input the command exits with
status 2, prints ONE readable line on stderr (no traceback) and writes no output file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from merging.errors import TRUST_PICKLE_HELP, IsoscopeError, MethodError
from merging.registry import Method, all_methods
from merging.runtime import use_huge_pages

log = logging.getLogger("merging.cli")
EXIT_USAGE = 2


class UsageError(IsoscopeError):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _params(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _describe(method: Method) -> list[str]:
    lines = [f"{method.name:18s} {method.display_name} - {method.summary}", f"{'':18s} {method.paper_url}"]
    if method.fixed_alpha is not None:
        lines.append(f"{'':18s} alpha fixed to {method.fixed_alpha.label}")
    for p in method.params:
        lines.append(f"{'':18s} --param {p.name}=VALUE  default {p.default:g}, range [{p.low:g}, {p.high:g}], "
                     f"step {p.step:g}: {p.help}")
    return lines


def cmd_methods(_args: argparse.Namespace) -> int:
    for method in all_methods().values():
        print("\n".join(_describe(method)))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from merging.merge import merge_files  # torch import only when merging

    out = Path(args.out)
    inputs = [Path(args.pretrained), *map(Path, args.finetuned)]
    if any(out.resolve() == p.resolve() for p in inputs if p.exists()):
        raise UsageError(f"--out {out} is one of the input files; choose another path")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as merged.safetensors")
    params = _params(args.param)
    method_names = list(all_methods())
    if args.method not in method_names:
        raise MethodError(f"unknown method {args.method!r}; choose one of: {', '.join(method_names)}")

    def progress(fraction: float, message: str) -> None:
        log.info("%3.0f%% %s", 100 * fraction, message)

    merge_files(args.pretrained, args.finetuned, args.method, out, params=params, alpha=args.alpha,
                device=args.device, trust_pickle=args.trust_pickle, progress=progress)
    print(f"wrote {out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from merging.io import convert_to_safetensors

    print(f"wrote {convert_to_safetensors(args.input, args.out, trust_pickle=args.trust_pickle)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m merging", description="Isoscope's merge engine, headless.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    merge = sub.add_parser("merge", help="merge checkpoint files into one safetensors file")
    merge.add_argument("--pretrained", required=True, help="θ0: safetensors or torch state-dict file")
    merge.add_argument("--finetuned", required=True, nargs="+", help="θt, one file per task")
    merge.add_argument("--method", required=True, help="see `python -m merging methods`")
    merge.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a method parameter")
    merge.add_argument("--alpha", type=float, default=None, help="scaling α (default 1.0; weight_averaging: 1/T)")
    merge.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    merge.add_argument("--trust-pickle", action="store_true",
                       help=TRUST_PICKLE_HELP)
    merge.add_argument("--out", required=True, help="output .safetensors file")
    merge.set_defaults(run=cmd_merge)
    methods = sub.add_parser("methods", help="list the methods and their parameters")
    methods.set_defaults(run=cmd_methods)
    convert = sub.add_parser("convert", help="convert a checkpoint (e.g. a trusted pickle) to safetensors")
    convert.add_argument("input", help="checkpoint file to convert")
    convert.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    convert.add_argument("--out", required=True, help="output .safetensors file")
    convert.set_defaults(run=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 on any user-fixable error, after one stderr line)."""
    use_huge_pages()
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(message)s", stream=sys.stderr)
        return args.run(args)
    except (IsoscopeError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - the contract: one line, never a traceback
        log.debug("unexpected failure", exc_info=True)
        print(f"error: unexpected {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
