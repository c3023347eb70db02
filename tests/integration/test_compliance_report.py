"""The compliance report of a version that was trained, registered and deployed on a real stack:
written as HTML and JSON, attached to its MLflow run, recorded in the ledger, and read in Chromium
the way an auditor reads it — every Annex IV section there, the digest and signer the registry
holds, the deploy with its time, and a verified inclusion proof on every ledger record listed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelyard.catalog import TAG_ARTIFACT_SHA256, Action
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.registry import registry_client
from modelyard.resources.serving_state import ServingState
from modelyard.signing import TAG_SIGNER
from tests.support.stacks import quiet
from tests.support.waits import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.browser]

SPECS = Path(__file__).resolve().parents[2] / "specs"
VERIFY_INCLUSION = Path(__file__).resolve().parents[2] / "infra" / "scripts" / "verify_inclusion.py"
MODEL = "comply-bc"
ANNEX_IV_TITLES = (
    "Annex IV §1 General description of the AI system",
    "Annex IV §2 Development process and data",
    "Annex IV §3 Monitoring, functioning and control",
    "Annex IV §4 Appropriateness of the performance metrics",
    "Annex IV §5 Risk management",
    "Annex IV §6 Lifecycle changes",
    "Record integrity",
)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run the tests with `make test`")
    return path


@pytest.fixture(scope="module")
def deployed(stack_env: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """A quiet test model's first version, trained and serving (its deploy in the ledger)."""
    from flows.pipeline import model_pipeline

    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = MODEL
    spec["serving"] = {"strategy": "blue_green"}
    spec_path = tmp_path_factory.mktemp("comply") / f"{MODEL}.yaml"
    spec_path.write_text(yaml.safe_dump(quiet(spec)))
    result = model_pipeline(str(spec_path))
    version = result["version"]
    assert result["champion"] == version
    assert ServingState(stack_env.settings.state_dir).wait_active(MODEL, version, 240) is not None
    ledger = ledger_from_settings(stack_env.settings)
    deploy = wait_until(lambda: [r for r in ledger.records(subject=f"{MODEL}/{version}")
                                 if r["action"] == Action.DEPLOY_SUCCEEDED], 60, "deploy.succeeded in the ledger")
    return version, deploy[-1]


def test_report_is_attached_recorded_and_reads_right_in_chromium(stack_env: Stack, deployed, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    from tasks.compliance import publish_compliance_report

    version, deploy = deployed
    settings = stack_env.settings
    report = publish_compliance_report(MODEL, version, out_dir=tmp_path)
    html, document = Path(report["html"]), json.loads(Path(report["json"]).read_text())
    assert html.name == f"compliance-{MODEL}-v{version}.html"
    assert report["sha256"] == hashlib.sha256(html.read_bytes()).hexdigest()

    # Both files on the version's MLflow run, and the report in the ledger with their digests.
    client = registry_client(settings)
    mv = client.get_model_version(MODEL, version)
    attached = {a.path for a in client.list_artifacts(mv.run_id, "compliance")}
    assert {f"compliance/{html.name}", f"compliance/{Path(report['json']).name}"} <= attached
    assert report["html_url"].endswith(f"run_uuid={mv.run_id}")
    recorded = [r for r in ledger_from_settings(settings).records(subject=f"{MODEL}/{version}")
                if r["action"] == Action.COMPLIANCE_REPORTED]
    assert recorded and recorded[-1]["details"]["html_sha256"] == report["sha256"]
    assert recorded[-1]["details"]["json_sha256"] == hashlib.sha256(Path(report["json"]).read_bytes()).hexdigest()
    assert recorded[-1]["details"]["html_url"] == report["html_url"]
    assert document["ledger_verification"]["ok"], document["ledger_verification"]
    reported = next(c for c in document["lineage"] if c["registered_model"] == MODEL and c["version"] == version)
    assert "champion" in reported["aliases"]  # the serving version's alias, as MLflow holds it
    # The Prefect artifact links the report in MLflow.
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[report["artifact_key"]])))
    assert report["artifact_key"] == f"{MODEL}-compliance"
    assert any(report["html_url"] in str(a.data) for a in artifacts), artifacts
    # A proof taken from the JSON verifies with the standalone checker and only the public key.
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(next(r["proof"] for r in document["records"] if r["seq"] == deploy["seq"])))
    checked = subprocess.run([sys.executable, str(VERIFY_INCLUSION), str(proof), "--public-key",
                              str(settings.state_dir / "keys" / "ledger-checkpoint.pub")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(html.as_uri(), wait_until="load")
            for title in ANNEX_IV_TITLES:
                expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
                expect(page.locator("nav.toc").get_by_role("link", name=title, exact=True)).to_be_visible()

            def fact(name: str):
                return page.locator("table.facts tr", has=page.get_by_role("rowheader", name=name, exact=True)).locator("td")

            expect(fact("Artifact digest (sha256)")).to_have_text(mv.tags[TAG_ARTIFACT_SHA256])
            expect(fact("Signature signer (key sha256)")).to_have_text(mv.tags[TAG_SIGNER])
            expect(fact("Signature")).to_have_text("signed")

            deploys = page.locator(f"tr.record[data-action='{Action.DEPLOY_SUCCEEDED}'][data-seq='{deploy['seq']}']")
            expect(deploys.first).to_be_visible()
            expect(deploys.first.locator("td.time")).to_have_text(deploy["time"])

            records = page.locator("tr.record")
            assert records.count() >= 4  # validated, registered, evaluated, promoted, deployed …
            for index in range(records.count()):
                expect(records.nth(index).locator("td.proof")).to_have_class("proof verified")
                expect(records.nth(index).locator("td.proof")).to_have_text("✓ verified")
            proofs = page.locator("tr.proof-row")
            assert proofs.count() == len(document["records"])
            for index in range(proofs.count()):
                expect(proofs.nth(index).locator("td.proof")).to_contain_text("✓ verified: leaf")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()


def test_report_command_says_clearly_when_the_version_does_not_exist(stack_env: Stack, deployed):
    import typer

    from modelyard.cli.report import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["report", MODEL, "999"])
    assert result.exit_code == 1, result.output
    assert f"{MODEL} v999 is not in the registry" in result.output


def test_report_of_a_copy_in_staging_covers_the_version_in_every_environment(stack_env: Stack, deployed):
    """A version copied into staging the way MLflow advises (``copy_model_version``, lineage tags
    on the copy) reports its dev life too: the dev deploy, validation and registration."""
    from modelyard.environments import (
        TAG_ENVIRONMENT, TAG_ORIGIN, TAG_SOURCE_MODEL, TAG_SOURCE_VERSION, environment_model,
    )
    from modelyard.resources import get_resources
    from tasks.compliance import collect_evidence

    version, deploy = deployed
    resources = get_resources(stack_env.settings)
    client = resources.registry
    staging = environment_model(MODEL, "staging")
    copy = client.copy_model_version(f"models:/{MODEL}/{version}", staging)
    for key, value in {TAG_ENVIRONMENT: "staging", TAG_ORIGIN: f"{MODEL}/{version}", TAG_SOURCE_MODEL: MODEL,
                       TAG_SOURCE_VERSION: version}.items():
        client.set_model_version_tag(staging, copy.version, key, value)

    document = collect_evidence(stack_env.settings, client, resources.ledger.records(), MODEL, str(copy.version),
                                env="staging")
    assert document["subject"]["registered_model"] == staging
    assert [(c["environment"], c["registered_model"]) for c in document["lineage"]] == [("dev", MODEL),
                                                                                         ("staging", staging)]
    assert document["lineage"][1]["copied_from"] == f"{MODEL}/{version}"
    cited = {r["seq"]: r for r in document["records"]}
    assert deploy["seq"] in cited and cited[deploy["seq"]]["proof"]["verified"]
    assert {Action.DATA_VALIDATED, Action.MODEL_REGISTERED} <= {r["action"] for r in cited.values()}
