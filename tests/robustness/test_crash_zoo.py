"""Crash safety of the digits zoo build cache (zoo/digits.py): `python -m zoo build` of the tiny
variant is SIGKILLed at several moments (during pretraining, right after the pretraining file,
mid fine-tuning, near the end). After every kill each cached file is complete and loadable; the
restarted build reuses every finished stage without rewriting it, and the final zoo equals the
zoo of an uninterrupted build."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from merging.io import load_state_dict, open_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ZOO = "digits-tiny"
pytestmark = pytest.mark.slow


def start_build(cache: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), ISOSCOPE_CACHE=str(cache), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "zoo", "build", "--name", ZOO, "--threads", "1"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def cached(cache: Path) -> list[Path]:
    """Finished cache files (temp files are hidden dot-files and never count)."""
    folder = cache / "zoo"
    return sorted(folder.glob("[!.]*.safetensors")) if folder.is_dir() else []


def stages(cache: Path, prefix: str) -> int:
    return sum(p.name.startswith(prefix) for p in cached(cache))


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return alive


def snapshot(cache: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every finished file, after checking each one loads completely."""
    for path in cached(cache):
        assert len(open_checkpoint(path).load()) > 0, path
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cached(cache)}


def test_zoo_build_killed_mid_way_restarts_cleanly(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    start = time.time()
    first_kill_s = random.Random(3).uniform(2.0, 3.0)
    kill_points: list[Callable[[], bool]] = [
        lambda: time.time() - start > first_kill_s,  # a random moment (imports or pretraining)
        lambda: stages(cache, "pretrain-") >= 1,  # right after the pretraining stage is written
        lambda: stages(cache, "finetune-") >= 3,  # mid fine-tuning
        lambda: stages(cache, "finetune-") >= 7,  # near the end
    ]
    finished: dict[str, tuple[int, int]] = {}
    killed = 0
    for ready in kill_points:
        start = time.time()
        killed += kill_when(start_build(cache), ready)
        now = snapshot(cache)
        assert {k: now[k] for k in finished} == finished, "a finished stage was rewritten"
        finished = now
    assert killed >= 3 and not any(p.name.startswith(ZOO) for p in cached(cache)), "kills came too late"
    proc = start_build(cache)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    proc.stderr.close()
    final = snapshot(cache)
    assert {k: final[k] for k in finished} == finished, "a finished stage was redone"
    assert sum(p.name.startswith(ZOO) for p in cached(cache)) == 1

    clean = tmp_path / "clean"
    proc = start_build(clean)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    proc.stderr.close()
    resumed_zoo, clean_zoo = (next(p for p in cached(c) if p.name.startswith(ZOO)) for c in (cache, clean))
    assert resumed_zoo.name == clean_zoo.name
    a, b = load_state_dict(resumed_zoo), load_state_dict(clean_zoo)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
