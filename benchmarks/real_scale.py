"""Real-scale interactivity: the app on a ViT-B/32-shaped folder of 8 fp32 tasks, served and
driven in headless Chromium, against a floor timed in the same run (docs/design.md, Targets).

    .venv/bin/python -m benchmarks.real_scale [--tasks 8] [--skip-large] [--keep DIR]

1. Builds the folder here, from a random open_clip ``ViT-B-32`` visual tower (no download): θ0,
   and T fine-tunes θ0 + τt whose matrices have smoothly decaying spectra (random Gaussian
   factors, σi ∝ 0.99^i), fp32, plain layout, no evaluation data.
2. The floor: the 9 singular-value decompositions (T tasks and their sum) of the 2304×768 layer
   the Spectra view opens on, best of 3, 2 threads.
3. Serves the app as ``make run`` does (``python -m ui.serve``, 127.0.0.1) with
   ``ISOSCOPE_ZOO=<folder>`` and a fresh cache, and times in
   Chromium: Spectra's first visit (navigation to both charts drawn), one step of its Iso-CTS
   slider (key press to the redrawn chart), the Alignment view at its default method set
   (navigation to the heatmap and bars: the sidebar's Iso-CTS, Task Arithmetic and Iso-C over
   every layer), then a click on its largest set (click to the redrawn bars: the other registered
   methods over every layer), and Spectra and Alignment again after a server restart (the
   on-disk store). Server peak RSS is the process's VmHWM.
4. Unless ``--skip-large``: a ViT-L/14-shaped folder of 20 fp16 tasks, served, Spectra's first
   visit and the server's peak RSS.
Ratios are printed against the floor; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from analysis.correlation import ALL_METHODS

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SPECTRA_KEY = "transformer.resblocks.0.attn.in_proj_weight"
LABELS = {"alignment": "alignment (default set: Iso-CTS, TA, Iso-C)",
          "alignment_all": "alignment, click to the largest set (the other methods)",
          "alignment_total": "alignment, every registered method (the two above)"}


def _tau(shape: tuple[int, ...], gen: torch.Generator, scale: float) -> torch.Tensor:
    """A task-vector entry: smoothly decaying spectrum for matrices, small noise otherwise."""
    if len(shape) != 2:
        return scale * 0.1 * torch.randn(*shape, generator=gen)
    m, n = shape
    r = min(m, n)
    sigma = scale * 0.99 ** torch.arange(r, dtype=torch.float32)  # (r,)
    a = torch.randn(m, r, generator=gen) / m ** 0.5
    b = torch.randn(r, n, generator=gen) / n ** 0.5
    return (a * sigma) @ b  # (m, n)


def build_folder(out: Path, model: str, tasks: int, dtype: torch.dtype, seed: int = 0) -> float:
    """θ0 and ``tasks`` fine-tunes of ``model``'s visual tower as safetensors; returns GB on disk."""
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    visual = open_clip.create_model(model, pretrained=None).visual
    theta0 = {k: v.detach().to(dtype).contiguous() for k, v in visual.state_dict().items()}
    save_file(theta0, str(out / "pretrained.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for t in range(tasks):
        state = {k: (v.float() + _tau(tuple(v.shape), gen, 0.01)).to(dtype).contiguous() for k, v in theta0.items()}
        save_file(state, str(out / f"task{t:02d}.safetensors"))
        print(f"  wrote task{t:02d}", flush=True)
    return sum(f.stat().st_size for f in out.iterdir()) / 1e9


def floor_seconds(folder: Path, tasks: int, repeat: int = 3) -> float:
    """Best time of the 9 SVDs (tasks and sum) of the layer Spectra opens on."""
    from merging.io import open_checkpoint

    pre = open_checkpoint(folder / "pretrained.safetensors")[SPECTRA_KEY].float()
    taus = [open_checkpoint(folder / f"task{t:02d}.safetensors")[SPECTRA_KEY].float() - pre for t in range(tasks)]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for tau in taus:
            torch.linalg.svdvals(tau)
        torch.linalg.svdvals(torch.stack(taus).sum(0))
        best = min(best, time.perf_counter() - start)
    return best


class Server:
    """``streamlit run app.py`` on 127.0.0.1 with a zoo and cache; stopped by its PID."""

    def __init__(self, zoo: Path, cache: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = dict(os.environ, ISOSCOPE_ZOO=str(zoo), ISOSCOPE_CACHE=str(cache), PYTHONUNBUFFERED="1",
                   OMP_NUM_THREADS="2")
        self.log = open(cache / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ui.serve", "--server.port", str(self.port)],  # as `make run`
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(self.url + "/_stcore/health", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("streamlit did not come up")

    def peak_rss_gb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


IDLE = "!document.querySelector('[data-testid=\"stStatusWidget\"]')"


def _settle(page: object, marker: str, charts: int, timeout_ms: int) -> None:
    page.get_by_text(marker).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {charts}", timeout=timeout_ms)
    page.wait_for_function(IDLE, timeout=timeout_ms)


def _errors(page: object) -> list[str]:
    return page.locator("[data-testid='stException'], [data-testid='stAlert']").all_inner_texts()


def visit(browser: object, url: str, marker: str, charts: int, timeout_ms: int = 900_000) -> tuple[object, float]:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    start = time.perf_counter()
    page.goto(url, wait_until="domcontentloaded")
    _settle(page, marker, charts, timeout_ms)
    return page, time.perf_counter() - start


def slider_step(page: object, timeout_ms: int = 300_000) -> float:
    before = page.locator(".js-plotly-plot").first.inner_text()
    thumb = page.locator("[data-testid='stSlider']", has_text="Common fraction of Iso-CTS").get_by_role("slider")
    thumb.focus()
    start = time.perf_counter()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("b => document.querySelector('.js-plotly-plot').innerText !== b", arg=before,
                           timeout=timeout_ms)
    page.wait_for_function(IDLE, timeout=timeout_ms)
    return time.perf_counter() - start


def choose_set(page: object, label: str, timeout_ms: int = 900_000) -> float:
    """Seconds from a click on the Alignment view's method-set option ``label`` to the bars redrawn
    for it (their caption names the new set) and the app idle."""
    caption = page.get_by_text("SAR_avg of ").first
    before = caption.inner_text()
    option = page.locator("[data-testid='stRadio']", has_text=label).get_by_text(label, exact=True)
    start = time.perf_counter()
    option.click()
    page.wait_for_function("b => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                           ".some(c => c.innerText.startsWith('SAR_avg of ') && c.innerText !== b)", arg=before,
                           timeout=timeout_ms)
    page.wait_for_function(IDLE, timeout=timeout_ms)
    return time.perf_counter() - start


@contextmanager
def served(folder: Path, cache: Path) -> Iterator[tuple[object, Server]]:
    """A Chromium browser and a server on ``folder``; both stopped on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        server = Server(folder, cache)
        try:
            yield browser, server
        finally:
            server.stop()
            browser.close()


def spectra_visit(browser: object, server: Server, tag: str) -> tuple[object, float]:
    page, seconds = visit(browser, server.url + "/spectra", "Common fraction of Iso-CTS", 2)
    print(f"  {tag}: Spectra {seconds:.1f} s; alerts: {_errors(page)}", flush=True)
    return page, seconds


def run_b32(folder: Path, work: Path) -> dict[str, float]:
    cache = work / "cache-b32"
    cache.mkdir()
    out: dict[str, float] = {}
    with served(folder, cache) as (browser, server):
        page, out["spectra_first"] = spectra_visit(browser, server, "first visit")
        steps = [slider_step(page) for _ in range(3)]
        out["slider_step"] = sorted(steps)[1]
        print(f"  slider steps {', '.join(f'{s:.2f}' for s in steps)} s", flush=True)
        page.close()
        page, out["alignment"] = visit(browser, server.url + "/alignment", "SAR_avg of ", 2)
        print(f"  Alignment (default set) {out['alignment']:.1f} s; alerts: {_errors(page)}", flush=True)
        out["alignment_all"] = choose_set(page, ALL_METHODS)
        out["alignment_total"] = out["alignment"] + out["alignment_all"]
        print(f"  Alignment, click on the largest set {out['alignment_all']:.1f} s; alerts: {_errors(page)}",
              flush=True)
        page.close()
        out["peak_rss_gb"] = server.peak_rss_gb()
    with served(folder, cache) as (browser, server):  # a restart: the store answers
        page, out["spectra_restart"] = spectra_visit(browser, server, "after a restart")
        page.close()
        page, out["alignment_restart"] = visit(browser, server.url + "/alignment", "SAR_avg of ", 2)
        page.close()
    return out


def run_large(work: Path) -> dict[str, float]:
    folder = work / "vit-l14-20"
    print("building the ViT-L/14 folder (20 fp16 tasks)…", flush=True)
    out = {"size_gb": build_folder(folder, "ViT-L-14", 20, torch.float16)}
    cache = work / "cache-l14"
    cache.mkdir()
    with served(folder, cache) as (browser, server):
        page, out["spectra_first"] = spectra_visit(browser, server, "ViT-L/14 × 20")
        page.close()
        out["peak_rss_gb"] = server.peak_rss_gb()
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--skip-large", action="store_true", help="skip the ViT-L/14 × 20 fp16 folder")
    p.add_argument("--keep", default=None, help="build into (and keep) this folder instead of a temporary one")
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="isoscope-real-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        folder = work / "vit-b32"
        if not (folder / "pretrained.safetensors").is_file():
            print("building the ViT-B/32 folder…", flush=True)
            print(f"  {build_folder(folder, 'ViT-B-32', args.tasks, torch.float32):.2f} GB", flush=True)
        for stale in work.glob("cache-*"):
            shutil.rmtree(stale)
        floor = floor_seconds(folder, args.tasks)
        print(f"floor (9 SVDs of the 2304×768 layer): {floor:.2f} s", flush=True)
        b32 = run_b32(folder, work)
        large = None if args.skip_large else run_large(work)
        print("\n| measure | seconds | × floor | target |\n|---|---|---|---|")
        for name, target in (("spectra_first", "≤ 10×"), ("slider_step", "≤ 2×"), ("alignment", "≤ 60×"),
                             ("alignment_all", "—"), ("alignment_total", "—"), ("spectra_restart", "—"),
                             ("alignment_restart", "—")):
            print(f"| {LABELS.get(name, name)} | {b32[name]:.2f} | {b32[name] / floor:.1f}× | {target} |")
        print(f"| server peak RSS | {b32['peak_rss_gb']:.2f} GB | | ≤ 3 GB |")
        if large:
            print(f"| ViT-L/14 × 20 fp16 ({large['size_gb']:.1f} GB): Spectra first visit | "
                  f"{large['spectra_first']:.1f} | | opens |")
            print(f"| ViT-L/14 × 20 fp16: server peak RSS | {large['peak_rss_gb']:.2f} GB | | ≤ 4 GB |")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
