"""A person opening the Prefect UI in a browser finds the smoke flow's run there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelyard.cli.runs import flow_run_url
from modelyard.cli.stack import Stack
from tests.support.stack_checks import assert_smoke_flow_runs_and_audits

pytestmark = [pytest.mark.stack, pytest.mark.browser]

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run the tests with `make test`")
    return path


def test_prefect_ui_shows_the_smoke_flow_run(sqlite_stack: Stack, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    flow_run = assert_smoke_flow_runs_and_audits(sqlite_stack)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{sqlite_stack.settings.prefect_ui_url}/runs", wait_until="domcontentloaded")
            expect(page.get_by_text(flow_run.name).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "runs.png"))

            page.goto(flow_run_url(sqlite_stack.settings, flow_run), wait_until="domcontentloaded")
            expect(page.get_by_text(flow_run.name).first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "flow-run.png"))
        finally:
            browser.close()
