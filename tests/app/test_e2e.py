"""End to end: a real `streamlit run` server on 127.0.0.1, visited in headless Chromium. Every
page renders without an exception or an error box, the shared sidebar survives navigation and
a slider move, and a screenshot per page lands in tests/artifacts/screenshots."""

from __future__ import annotations

import time

import pytest

from tests.app.page_markers import PAGES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

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


def test_every_page_serves_without_errors(e2e_zoo: str, tour_evidence: None, streamlit_server: str, browser,
                                         screenshot_dir) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    for _title, path, marker, charts in PAGES:
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
    page.wait_for_function("before => { const chart = document.querySelector('.js-plotly-plot');"
                           " return chart !== null && chart.innerText !== before; }", arg=before,
                           timeout=60_000)
    _assert_clean(page, "spectra after a slider move")
    page.close()


def test_presenter_link_and_fixed_size_svg_export(e2e_zoo: str, tour_evidence: None, streamlit_server: str, browser,
                                                  tmp_path) -> None:
    """A prepared link opens the tour on its step, settings and presenter mode (no sidebar); the
    chart's camera button downloads a 1200×675 SVG drawn by plotly.js (no renderer installed) that
    carries its title, the settings and the paper's citation."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    page.goto(f"{streamlit_server}/learn?step=6&shared=0.3&weak=0.4&present=1", wait_until="domcontentloaded")
    _settle(page, "Iso-CTS: common and task-specific", 2)
    assert page.locator("[data-testid='stException']").count() == 0
    assert not page.locator("[data-testid='stSidebar']").is_visible()  # presenter mode hides it
    assert page.locator(".js-plotly-plot").count() == 2  # step 6 only
    assert "shared=0.3" in page.url and "step=6" in page.url
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
    assert "shared 0.3, weak task 0.4" in svg and "Marczak et al., ICML 2025" in svg  # settings and citation
    page.get_by_role("button", name="Next ▶").click()
    page.wait_for_function("window.location.search.includes('step=7')", timeout=60_000)
    page.close()


SCROLLERS = """[document.scrollingElement, ...document.querySelectorAll(
    '[data-testid="stMain"], [data-testid="stAppViewContainer"], section.main')].filter(Boolean)"""
OVERFLOW = f"() => Math.max(...{SCROLLERS}.map(e => e.scrollHeight - e.clientHeight))"
SCROLLED = f"() => Math.max(...{SCROLLERS}.map(e => e.scrollTop))"
# smallest chart text (px), lead words, and whether a legend overlaps a title or leaves its chart
SCREEN = """() => {
  const sizes = [...document.querySelectorAll('.js-plotly-plot .main-svg text, .js-plotly-plot .infolayer text')]
    .filter(t => t.textContent.trim()).map(t => parseFloat(getComputedStyle(t).fontSize));
  const words = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stMarkdown"] p')]
    .flatMap(p => p.innerText.split(/\\s+/)).filter(w => /[A-Za-z0-9]/.test(w)).length;
  const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const bad = [...document.querySelectorAll('.js-plotly-plot')].filter(p => {
    const legend = p.querySelector('.legend'), box = p.getBoundingClientRect();
    if (!legend) return false;
    const l = legend.getBoundingClientRect();
    const titles = [...p.querySelectorAll('.gtitle, .gtitle-subtitle')].map(t => t.getBoundingClientRect());
    return titles.some(t => hit(l, t)) || l.right > box.right + 1 || l.bottom > box.bottom + 1;
  }).length;
  const small = [...document.querySelectorAll('.js-plotly-plot .main-svg text, .js-plotly-plot .infolayer text')]
    .filter(t => t.textContent.trim() && parseFloat(getComputedStyle(t).fontSize) < 13).map(t => t.textContent + ' @ ' + getComputedStyle(t).fontSize).slice(0, 8);
  return {min: Math.min(...sizes), words, bad, small};
}"""


def _step(page, n: int) -> None:
    try:
        page.wait_for_function(f"/[?&]step={n}(&|$)/.test(window.location.search)", timeout=60_000)
    except Exception:
        raise AssertionError(f"not on step {n}: {page.url}") from None
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)
    page.wait_for_timeout(700)  # plotly's last layout pass


def test_presenter_fits_a_lecture_screen_and_arrow_keys_move(e2e_zoo: str, tour_evidence: None, streamlit_server: str,
                                                             browser) -> None:
    """At 1920×1080 every step fits the screen with no scrolling, its text is at most about 60 words
    and every chart text is 20 px or more, with legends clear of titles; → and ← move, and a new
    step starts at the top."""
    from analysis import tour

    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.goto(f"{streamlit_server}/learn?step=1&present=1", wait_until="domcontentloaded")
    _settle(page, "Fig. 1: one layer merged three ways", 2)
    for n in range(1, len(tour.STEP_KEYS) + 1):
        if n > 1:
            page.locator("[data-testid='stMain'] h3").first.click()  # focus on the page, not on a widget
            page.keyboard.press("ArrowRight")
            _step(page, n)
        try:  # the previous step's elements leave once the run has ended
            page.wait_for_function(f"() => ({OVERFLOW})() <= 2", timeout=15_000)
        except Exception:
            raise AssertionError(f"step {n} scrolls by {page.evaluate(OVERFLOW)} px") from None
        screen = page.evaluate(SCREEN)
        assert screen["min"] >= 20, (n, screen)
        assert 20 <= screen["words"] <= tour.LEAD_WORDS, (n, screen)  # the lead, nothing else
        assert screen["bad"] == 0, (n, screen)
    page.keyboard.press("ArrowLeft")
    _step(page, len(tour.STEP_KEYS) - 1)
    page.set_viewport_size({"width": 1280, "height": 500})  # now a step is taller than the screen
    page.wait_for_timeout(500)
    page.evaluate(f"() => {SCROLLERS}.forEach(e => e.scrollTop = e.scrollHeight)")
    assert page.evaluate(SCROLLED) > 0
    page.get_by_role("button", name="◀ Previous").click()
    _step(page, len(tour.STEP_KEYS) - 2)
    page.wait_for_function(f"() => ({SCROLLED})() === 0", timeout=10_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_a_direct_learn_link_on_a_fresh_server_renders_the_full_app(e2e_zoo: str, fresh_server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(f"{fresh_server}/learn", wait_until="domcontentloaded")  # the server's very first request
    _settle(page, "Task matrices and their spectra", 14)
    _assert_clean(page, "learn on a fresh server")  # the sidebar is there
    nav = page.locator("[data-testid='stSidebarNav']")
    assert nav.get_by_text("Common subspace").count() == 1  # the app's titles, not file names
    assert nav.get_by_text("common_subspace").count() == 0
    width = page.evaluate("() => document.querySelector('.stMainBlockContainer').getBoundingClientRect().width")
    assert width > 1000  # the wide layout (the default one is 736 px)
    page.close()
