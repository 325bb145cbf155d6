"""How much work and memory reading one untrusted file may cost (docs/safety.md, Budgets).

Every budget is a floor plus a share of the bytes it guards (the pickle, the zip, the file), so
a real checkpoint of any size fits and a small hostile file cannot buy more work than its size
pays for. Exceeding one raises ``BudgetExceeded`` (a ``CheckpointError``) naming the budget.
The parser's process limits (address space, CPU seconds, wall time) sit in the same table.

Torch-free on purpose: the isolated parser (``merging.parse_worker``) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from merging import settings
from merging.errors import CheckpointError


@dataclass(frozen=True)
class Budget:
    """At most ``floor + per_byte * guarded_bytes`` (``per_byte`` may be 0: a fixed cap)."""

    floor: int
    per_byte: float
    guards: str  # which bytes it is proportional to
    what: str  # what is counted, for the docs table and the message
    setting: str | None = None  # a merging.settings name whose value replaces ``floor`` (deployments tune it)

    def limit(self, nbytes: int) -> int:
        floor = settings.value(self.setting) if self.setting else self.floor
        return floor + int(self.per_byte * max(nbytes, 0))


MiB = 2**20
# name -> budget. docs/safety.md carries the same table (a test keeps them equal).
BUDGETS: dict[str, Budget] = {
    "opcodes": Budget(0, 1.0, "pickle", "pickle opcodes executed (each is at least a byte: bounded by 'pickle bytes')"),
    "objects": Budget(16384, 0.25, "pickle", "objects that cost more than their bytes (containers, records, calls)"),
    "container": Budget(4096, 0.125, "pickle", "items in one list, tuple, dict or set"),
    "keys": Budget(4096, 0.125, "pickle", "dict and set insertions, all containers together"),
    "memo": Budget(4096, 0.25, "pickle", "memo entries"),
    "depth": Budget(64, 0.0, "-", "nesting: modules in modules, wrappers (open MARKs: 4 ×)"),
    "key nodes": Budget(64, 0.0, "-", "nodes of one dict key or set item (checked before it is hashed)"),
    "int bytes": Budget(32, 0.0, "-", "bytes of one pickled integer"),
    "name chars": Budget(512, 0.0, "-", "characters of one global's dotted name"),
    "globals": Budget(256, 1 / 1024, "pickle", "distinct globals a pickle names"),
    "tensors": Budget(4096, 1 / 64, "pickle", "tensors a pickle declares (module trees included)"),
    "pickle bytes": Budget(4 * MiB, 0.0, "-", "bytes of the pickle in a torch file", "max_pickle"),
    "zip members": Budget(4096, 1 / 65536, "file", "records in a zip's central directory"),
    "zip directory bytes": Budget(1 * MiB, 1 / 1024, "file", "bytes of a zip's central directory"),
    "output bytes": Budget(1 * MiB, 4.0, "file", "bytes of all tensors a file yields (tied weights may repeat)"),
    "header bytes": Budget(16 * MiB, 0.0, "-", "bytes of a safetensors JSON header", "max_header"),
    "parser memory MiB": Budget(1024, 0.0, "-", "address space of the parser process (RLIMIT_AS)"),
    "parser CPU s": Budget(5, 0.0, "-", "CPU seconds of the parser process (RLIMIT_CPU)"),
    "parser wall s": Budget(10, 0.0, "-", "wall-clock seconds before the parser process is killed"),
}


class BudgetExceeded(CheckpointError):
    """Reading a file would cost more than its budget; the message names the budget."""


def limit(name: str, nbytes: int = 0) -> int:
    """The budget ``name`` for ``nbytes`` guarded bytes."""
    return BUDGETS[name].limit(nbytes)


def exceeded(name: str, nbytes: int = 0) -> BudgetExceeded:
    """The error for budget ``name`` (one line, without the file's path)."""
    budget = BUDGETS[name]
    return BudgetExceeded(f"exceeds the '{name}' budget ({budget.what}: at most {budget.limit(nbytes)} "
                          f"{'for this file' if budget.per_byte else ''})".replace(" )", ")"))


def docs_table() -> str:
    """The Markdown table docs/safety.md shows (rows in ``BUDGETS`` order)."""
    rows = ["| budget | counts | floor | plus |", "|---|---|---|---|"]
    for name, b in BUDGETS.items():
        share = "nothing (fixed)" if not b.per_byte else f"{b.per_byte:g} per byte of the {b.guards}" \
            if b.per_byte >= 0.1 else f"1 per {round(1 / b.per_byte)} bytes of the {b.guards}"
        floor = f"{b.floor} (`{settings.SETTINGS[b.setting].env}`)" if b.setting else str(b.floor)
        rows.append(f"| {name} | {b.what} | {floor} | {share} |")
    return "\n".join(rows)
