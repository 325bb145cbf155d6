"""End to end: a real `streamlit run` server on 127.0.0.1, visited in headless Chromium."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_app_serves_without_errors(streamlit_server: str, browser, screenshot_dir) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(streamlit_server, wait_until="domcontentloaded")
    page.get_by_text("Isoscope").first.wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    page.screenshot(path=str(screenshot_dir / "home.png"), full_page=True)
    assert not errors, errors
    page.close()
