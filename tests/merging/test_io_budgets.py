"""Hostile files that need no code to hurt a server (tests/merging/hostile_corpus.py) each end
in a named CheckpointError within a second of parser CPU time (wall time is also bounded, loosely:
a shared test machine can be loaded), with the reading process's peak memory within a few
hundred MB of where it started, and the process alive. Every case runs in a subprocess with a
timeout, so a regression that hangs or crashes fails this test instead of killing pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from merging import budgets
from tests.merging.hostile_corpus import CORPUS, write_corpus

ROOT = Path(__file__).resolve().parents[2]
CPU_SECONDS, WALL_SECONDS, RSS_MB = 1.0, 5.0, 300

# Opens and fully reads each file; prints name -> [error class, message, seconds, peak RSS growth MB].
SCRIPT = textwrap.dedent("""
    import json, re, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from merging.io import _sniff, open_checkpoint
    from merging.parse_worker import parse_isolated
    parse_isolated("/dev/null", 0, "unknown")  # start the helper before timing
    status, clear = Path("/proc/self/status"), Path("/proc/self/clear_refs")
    def mb(field):
        return int(re.search(field + r":\\s+(\\d+) kB", status.read_text()).group(1)) / 1024
    out = {}
    for name, path in json.loads(sys.stdin.read()).items():
        clear.write_text("5")
        start, t = mb("VmRSS"), time.perf_counter()
        try:
            open_checkpoint(path).load()
            kind, message = "loaded", ""
        except Exception as err:
            kind, message = type(err).__name__, str(err)
        seconds, grown = time.perf_counter() - t, mb("VmHWM") - start
        p = Path(path)
        answer = parse_isolated(p, p.stat().st_size, _sniff(p, p.read_bytes()[:16]))
        out[name] = [kind, message, seconds, grown, answer.get("cpu_s", 0.0)]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    paths = write_corpus(tmp_path_factory.mktemp("hostile"))
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], input=json.dumps({k: str(v) for k, v in paths.items()}),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(run.stdout.splitlines()[-1])
    if os.environ.get("ISOSCOPE_HOSTILE_REPORT"):  # per case: error, message, wall s, RSS growth MB, parser CPU s
        Path(os.environ["ISOSCOPE_HOSTILE_REPORT"]).write_text(json.dumps(rows, indent=1))
    return {name: [*row, str(paths[name])] for name, row in rows.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_file_ends_in_a_named_error_quickly_and_small(results: dict[str, list], case: str) -> None:
    kind, message, seconds, grown, cpu, path = results[case]
    words = CORPUS[case][2]
    assert kind in {"CheckpointError", "BudgetExceeded"}, (kind, message)
    assert message.startswith(path) and "\n" not in message and message.isprintable(), message
    assert words in message, message
    assert "unexpected" not in message, message  # a raw exception reached the boundary: a bug
    assert cpu < CPU_SECONDS, f"{case}: the parser used {cpu:.2f} s of CPU"
    assert seconds < WALL_SECONDS, f"{case}: {seconds:.2f} s"
    assert grown < RSS_MB, f"{case}: peak RSS grew {grown:.0f} MB"


def test_budgets_table_in_the_docs_matches_the_code() -> None:
    text = (ROOT / "docs" / "safety.md").read_text()
    assert budgets.docs_table() in text


def test_a_budget_is_a_floor_plus_a_share_of_the_bytes() -> None:
    objects = budgets.BUDGETS["objects"]
    assert budgets.limit("objects", 0) == objects.floor
    assert budgets.limit("objects", 4_000_000) == objects.floor + int(objects.per_byte * 4_000_000)
    assert budgets.limit("depth", 10**9) == budgets.limit("depth", 0)  # fixed caps do not grow
    with pytest.raises(budgets.BudgetExceeded, match="'objects' budget"):
        raise budgets.exceeded("objects", 100)


BOOT = """
import os, sys
sys.path.insert(0, sys.argv[1])
import merging.parse_worker as worker
real = worker.parse_file
def parse(path, size, kind):  # the parser's own failures, on demand
    if path.endswith("segv"):
        os.kill(os.getpid(), 11)
    if path.endswith("spin"):
        while True:
            pass
    if path.endswith("hog"):
        hog = [bytearray(2**20) for _ in range(10**5)]
    return real(path, size, kind)
worker.parse_file = parse
worker.serve()
"""


@pytest.mark.slow
def test_a_crash_a_cpu_hog_or_a_memory_hog_in_the_parser_is_an_answer_and_the_pool_lives_on(tmp_path: Path) -> None:
    """A parser process dies by SIGSEGV, spins (RLIMIT_CPU, or the wall-clock limit on a loaded
    machine), or hits RLIMIT_AS: each is one error answer, and the pool then parses valid files,
    reusing a warm process for the second."""
    import torch

    import merging.parse_worker as worker

    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    pool = worker._Pool(boot=BOOT)
    try:
        def ask(*paths: Path) -> list[dict]:
            return pool.ask([{"path": str(p), "size": p.stat().st_size if p.exists() else 1, "kind": "torch-zip"}
                             for p in paths])

        crashed, spun, hogged = ask(tmp_path / "segv", tmp_path / "spin", tmp_path / "hog")
        assert crashed["status"] == "error" and "crashed (SIGSEGV)" in crashed["message"], crashed
        assert spun["status"] == "error" and ("CPU limit" in spun["message"] or "took longer" in spun["message"]), spun
        assert hogged["status"] == "error" and "memory" in hogged["message"], hogged
        assert all(w.proc.poll() is None for w in pool._workers.values())  # the crashed and killed ones are gone
        answer = ask(good)[0]
        assert answer["status"] == "ok" and list(answer["tensors"]) == ["w"], answer
        warm = [w.proc.pid for w in pool._workers.values()]
        assert all(os.sched_getaffinity(pid) == {core} for pid, core in zip(warm, pool._cores))  # one core each
        assert ask(good)[0]["status"] == "ok" and [w.proc.pid for w in pool._workers.values()] == warm
    finally:
        pool.stop()
