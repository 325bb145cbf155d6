"""End to end: a real `streamlit run` server on 127.0.0.1, visited in headless Chromium. Every
page renders without an exception or an error box, the shared sidebar survives navigation and
a slider move, and a screenshot per page lands in tests/artifacts/screenshots."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# (url path, a text the page shows once it has rendered, charts expected)
PAGES = (
    ("", "Task-vector geometry", 3),
    ("spectra", "Common fraction of Iso-CTS", 2),
    ("alignment", "Does alignment predict accuracy?", 3),
    ("common_subspace", "Rank ratio ρ (CART)", 2),
    ("merge_export", "Download", 1),
    ("learn", "Task vectors and their spectra", 13),
)
LOAD_MS = 240_000  # the first page builds the zoo (digits-tiny: seconds; digits: minutes)


def _settle(page, marker: str, charts: int, timeout: int = LOAD_MS) -> None:
    page.get_by_text(marker).first.wait_for(timeout=timeout)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {charts}", timeout=timeout)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)
    page.wait_for_timeout(800)  # plotly's last layout pass


def _assert_clean(page, where: str) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, f"exception on {where}"
    errors = page.locator("[data-testid='stAlertContentError']")
    assert errors.count() == 0, f"error box on {where}: {errors.all_inner_texts()}"
    assert page.locator("[data-testid='stSidebar']").get_by_text("Model zoo").count() == 1, f"no sidebar on {where}"


def test_every_page_serves_without_errors(e2e_zoo: str, streamlit_server: str, browser, screenshot_dir) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    for path, marker, charts in PAGES:
        start = time.perf_counter()
        page.goto(f"{streamlit_server}/{path}", wait_until="domcontentloaded")
        _settle(page, marker, charts)
        print(f"{path or 'overview'}: rendered in {time.perf_counter() - start:.1f} s")
        _assert_clean(page, path or "overview")
        page.screenshot(path=str(screenshot_dir / f"{path or 'overview'}.png"), full_page=True)
    assert not crashes, crashes
    page.close()


def test_slider_move_reruns_with_sidebar_intact(e2e_zoo: str, streamlit_server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(f"{streamlit_server}/spectra", wait_until="domcontentloaded")
    _settle(page, "Common fraction of Iso-CTS", 2)
    before = page.locator(".js-plotly-plot").first.inner_text()
    thumb = page.locator("[data-testid='stSlider']", has_text="Common fraction of Iso-CTS").get_by_role("slider")
    thumb.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")  # 0.80 → 0.50: the boundary annotation moves
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    # the chart redraws after the rerun ends; on a loaded machine that can take a while
    page.wait_for_function("before => document.querySelector('.js-plotly-plot').innerText !== before", arg=before,
                           timeout=60_000)
    _assert_clean(page, "spectra after a slider move")
    page.close()


def test_presenter_link_and_fixed_size_svg_export(e2e_zoo: str, streamlit_server: str, browser, tmp_path) -> None:
    """A prepared link opens the tour on its step, settings and presenter mode (no sidebar); the
    chart's camera button downloads a 1200×675 SVG drawn by plotly.js (no renderer installed)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    page.goto(f"{streamlit_server}/learn?step=5&shared=0.3&weak=0.4&present=1", wait_until="domcontentloaded")
    _settle(page, "Iso-C is not enough", 2)
    assert page.locator("[data-testid='stException']").count() == 0
    assert not page.locator("[data-testid='stSidebar']").is_visible()  # presenter mode hides it
    assert page.locator(".js-plotly-plot").count() == 2  # step 5 only
    assert "shared=0.3" in page.url and "step=5" in page.url
    chart = page.locator(".js-plotly-plot").first
    chart.hover()
    with page.expect_download(timeout=60_000) as info:
        chart.locator(".modebar-btn[data-title^='Download plot']").first.click()
    download = info.value
    assert download.suggested_filename == "isoscope-stacked.svg"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    svg = path.read_text()
    assert svg.startswith("<svg") and 'width="1200"' in svg and 'height="675"' in svg
    assert "Iso-CTS stacks k = " in svg  # the figure's own title travels with it
    page.get_by_role("button", name="Next ▶").click()
    page.wait_for_function("window.location.search.includes('step=6')", timeout=60_000)
    page.close()
