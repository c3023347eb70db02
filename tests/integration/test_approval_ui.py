"""An approver approves a production promotion in the real Prefect UI: the suspended promote run's
Resume form shows the evidence, takes identity, decision, comment and a one-time code, and the
promotion completes with the approval in the ledger and the version copied into production."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelyard.approvals import enrol, enrolment
from modelyard.catalog import Action
from modelyard.cli.stack import Stack
from modelyard.environments import TAG_SOURCE_MODEL
from modelyard.ledger import ledger_from_settings
from modelyard.resources import get_resources
from tests.integration.test_ui_browser import CHROMIUM_FLAGS, _chromium
from tests.support.promotion import promote_to_suspended
from tests.support.waits import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.browser]

MODEL = "approvals-ui"


def _records(stack: Stack, flow_run_id: str, action: Action) -> list[dict]:
    return [r for r in ledger_from_settings(stack.settings).records()
            if r["action"] == action and str((r.get("details") or {}).get("flow_run_id")) == flow_run_id]


def test_an_approver_approves_in_the_prefect_ui_form_and_the_version_reaches_production(
        stack_env: Stack, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    settings = stack_env.settings
    pending = promote_to_suspended(stack_env, tmp_path / "spec", MODEL)
    approver = enrolment(settings, "uma") or enrol(settings, "uma", team="risk-approvers")[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{settings.prefect_ui_url}/runs", wait_until="domcontentloaded")
            login = page.get_by_placeholder("admin:pass")  # Prefect's UI asks for the API auth string
            expect(login).to_be_visible(timeout=60_000)
            login.fill(settings.prefect_auth())
            page.get_by_role("button", name="Login").click()
            expect(page.get_by_role("button", name="Login")).to_be_hidden(timeout=60_000)
            page.goto(pending.url, wait_until="domcontentloaded")  # the link `modelyard approvals` prints
            page.get_by_role("button", name="Resume").first.click()
            form = page.locator(".p-modal")
            # The evidence is the form's description, rendered as markdown above the fields.
            expect(form.get_by_text(f"Promote {pending.source_model} v1 into production")).to_be_visible(timeout=30_000)
            expect(form.get_by_text("Signature", exact=False).first).to_be_visible()
            expect(form.get_by_text("Evaluation", exact=False).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "form.png"))

            def field(label: str):
                name = page.locator(".schema-form-property__label", has_text=re.compile(rf"^{label}( \(Optional\))?$"))
                return form.locator(".schema-form-property").filter(has=name)

            field("Approver").locator("textarea").fill("uma")
            decision = field("Decision").locator("button.p-select-button__control")
            decision.focus()
            page.keyboard.press("ArrowDown")  # the select opens from the keyboard
            page.locator(".p-select-option", has_text=re.compile(r"^approve$")).click()
            expect(decision).to_have_text(re.compile("approve"))
            field("Comment").locator("textarea").fill("evidence reviewed in the UI")
            field("Code").locator("textarea").fill(approver.totp().now())
            page.screenshot(path=str(tmp_path / "filled.png"))
            form.get_by_role("button", name="Submit").click()
            expect(form).to_be_hidden(timeout=30_000)
        finally:
            browser.close()

    given = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.APPROVAL_GIVEN), 120, "approval.given")
    assert (given[0]["details"]["identity"], given[0]["details"]["comment"]) == ("uma", "evidence reviewed in the UI")
    copied = wait_until(lambda: _records(stack_env, pending.flow_run_id, Action.PROMOTION_COPIED), 120,
                        "promotion.copied")
    model, _, version = copied[-1]["subject"].rpartition("/")
    assert model == f"{MODEL}-production"
    assert get_resources().registry.get_model_version(model, version).tags[TAG_SOURCE_MODEL] == pending.source_model
