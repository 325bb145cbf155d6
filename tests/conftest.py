"""Shared test fixtures: an isolated cache directory, thread limits, and the browser/server
fixtures for end-to-end tests (Debian's Chromium driven by playwright; never a downloaded one)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session gets its own cache directory (zoo builds, result store)."""
    cache = tmp_path_factory.mktemp("isoscope-cache")
    old = os.environ.get("ISOSCOPE_CACHE")
    os.environ["ISOSCOPE_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("ISOSCOPE_CACHE", None)
    else:
        os.environ["ISOSCOPE_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """A real multi-node Ray cluster on this machine (a head without CPUs, two 1-CPU nodes), shared
    by the cluster tests and shut down at the end of the session."""
    from analysis.cluster import local_cluster
    from zoo import load_zoo

    from zoo.train import fixed_threads

    # built once into the session's cache, which the workers inherit; with the thread count every other
    # test builds it with (digits-tiny's recipe does not fix one, and its weights depend on it)
    with fixed_threads(min(2, os.cpu_count() or 1)):
        load_zoo("digits-tiny")
    with local_cluster(nodes=2) as cluster:
        yield cluster


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny products (the tour's 8×8 toy, digits-tiny's small
    encoder) gain nothing from threads, and on a busy machine lose a lot to them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of Debian's Chromium; skipped with a reason when missing (a failure under CI=true)."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) for browser tests"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " [CI=true makes this a failure]")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True)
        yield b
        b.close()


@contextlib.contextmanager
def serve(cache: Path, log: Path) -> Iterator[str]:
    """The app as `make run` serves it (``python -m ui.serve``: `streamlit run app.py` on 127.0.0.1)
    at a free port, with the result store and zoos under ``cache``; stopped by its PID afterwards."""
    port = _free_port()
    env = dict(os.environ, ISOSCOPE_CACHE=str(cache), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "ui.serve", "--server.port", str(port)]  # what `make run` starts
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{log.read_text()}")
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"streamlit did not come up in 90 s:\n{log.read_text()}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def streamlit_server(isolated_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the session's browser tests (see ``serve``)."""
    with serve(isolated_cache, tmp_path_factory.mktemp("server") / "streamlit.log") as url:
        yield url


@pytest.fixture
def fresh_server(isolated_cache: Path, tmp_path: Path) -> Iterator[str]:
    """A server of its own that no browser has visited yet (see ``serve``)."""
    with serve(isolated_cache, tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    out = ROOT / "tests" / "artifacts" / "screenshots"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out
