"""A person opening the Prefect UI in a browser logs in with the stack's auth string and finds the
smoke flow's run there; MLflow's UI lets the read-only viewer in."""

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


def test_prefect_ui_asks_for_the_auth_string_then_shows_the_smoke_flow_run(sqlite_stack: Stack, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    settings = sqlite_stack.settings
    flow_run = assert_smoke_flow_runs_and_audits(sqlite_stack)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{settings.prefect_ui_url}/runs", wait_until="domcontentloaded")
            # Prefect's UI asks for the API auth string (its placeholder shows the user:password form).
            login = page.get_by_placeholder("admin:pass")
            expect(login).to_be_visible(timeout=60_000)
            assert "/login" in page.url
            page.screenshot(path=str(tmp_path / "login.png"))
            login.fill(settings.prefect_auth())
            page.get_by_role("button", name="Login").click()
            expect(page.get_by_text(flow_run.name).first).to_be_visible(timeout=60_000)
            assert "/login" not in page.url
            page.screenshot(path=str(tmp_path / "runs.png"))

            page.goto(flow_run_url(sqlite_stack.settings, flow_run), wait_until="domcontentloaded")
            expect(page.get_by_text(flow_run.name).first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "flow-run.png"))

            # MLflow asks the browser for basic-auth credentials; the viewer's open its UI.
            viewer = browser.new_context(viewport={"width": 1400, "height": 900}, http_credentials={
                "username": settings.mlflow_username("viewer"), "password": settings.mlflow_password("viewer")})
            mlflow_page = viewer.new_page()
            assert mlflow_page.goto(settings.mlflow_url, wait_until="domcontentloaded").status == 200
            expect(mlflow_page.get_by_text(settings.mlflow_username("viewer")).first).to_be_visible(timeout=60_000)
            mlflow_page.screenshot(path=str(tmp_path / "mlflow.png"))
        finally:
            browser.close()
