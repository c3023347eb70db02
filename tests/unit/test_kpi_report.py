"""The KPI report: a page an auditor can open, built from ledger records alone, and the same KPIs
in the Prometheus text format (parsed back with prometheus_client) behind the bridge's token."""

from __future__ import annotations

import asyncio
import base64
import re
from html.parser import HTMLParser

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deployments.bridge import BridgeApp, SeenDeliveries, WebhookVerifier
from modelyard.evidence import Lineage, evidence_completeness
from modelyard.kpi_exposition import CachedExposition, exposition
from modelyard.kpi_snapshot import build_snapshot
from modelyard.kpis import Scope, record_time
from tasks.kpis import delivery_kpis
from tasks.reporting import deployments_by_day, kpi_markdown, write_kpi_report


def rec(day: int, second: int, action: str, subject: str, **details) -> dict:
    return {"time": f"2026-03-{day:02d}T10:00:{second:02d}+00:00", "action": action, "subject": subject,
            "details": details}


RECORDS = [
    rec(1, 0, "deploy.started", "fraud/1"),
    rec(1, 9, "deploy.succeeded", "fraud/1", strategy="blue_green", timeline=[{"step": "switched"}]),
    rec(1, 20, "deploy.succeeded", "fraud/1", strategy="blue_green", timeline=[{"step": "already serving"}]),
    rec(2, 5, "deploy.rolled_back", "fraud/2", strategy="canary", reason="canary gate failed at 10%: error_rate 0.4 > 0.01"),
    rec(3, 1, "kpi.recovered", "fraud/3", alert="monitor.drift.detected", mttd_s=41.5, mttr_s=93.25, retrain_s=40.0),
    rec(3, 2, "deploy.succeeded", "fraud/3", strategy="canary", timeline=[{"step": "switched"}]),
    rec(3, 30, "deploy.manual_rollback", "fraud/1", reason="manual"),
    rec(3, 40, "deploy.succeeded", "churn/1", strategy="shadow", timeline=[{"step": "switched"}]),
]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if data.strip():
            self.cells.append(data.strip())


def test_outcomes_are_counted_per_day_without_redeploys_of_the_serving_version():
    days = deployments_by_day(RECORDS, "fraud")
    assert list(days) == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert days["2026-03-01"] == {"succeeded": 1}  # the "already serving" re-deploy is not a deployment
    assert days["2026-03-02"] == {"rolled back by itself": 1}
    assert days["2026-03-03"] == {"succeeded": 1, "rolled back by hand": 1}


def test_page_stands_alone_with_the_numbers_the_chart_and_the_reasons(tmp_path):
    page = write_kpi_report(RECORDS, "fraud", tmp_path / "kpis.html")
    parsed = _Page()
    parsed.feed(page.read_text())
    numbers = delivery_kpis(RECORDS, "fraud")
    assert numbers["deployments"] == 2 and numbers["automatic_rollbacks"] == 1
    text = " | ".join(parsed.cells)
    assert "success rate | 66.7%" in text
    assert "mean time to detect (s) | 41.5" in text and "mean time to recover (s) | 93.2" in text
    assert "canary gate failed at 10%: error_rate 0.4 > 0.01" in text
    assert "churn/1" not in text  # another model's rollout is not in this model's page
    # The chart is embedded (the page opens anywhere) and is the PNG written beside it.
    assert len(parsed.images) == 1
    embedded = base64.b64decode(parsed.images[0].split(",", 1)[1])
    assert embedded[:8] == b"\x89PNG\r\n\x1a\n" and embedded == (tmp_path / "kpis.png").read_bytes()


def test_page_escapes_what_the_ledger_carries(tmp_path):
    hostile = RECORDS + [rec(4, 0, "deploy.rolled_back", "fraud/9", reason="<script>alert(1)</script>")]
    page = write_kpi_report(hostile, None, tmp_path / "all.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_markdown_names_every_kpi_with_a_value_or_a_dash():
    markdown = kpi_markdown(delivery_kpis([], None), "Delivery KPIs of every model")
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", markdown, flags=re.MULTILINE)[1:]  # after the header
    assert len(rows) == len(delivery_kpis([], None))
    assert dict(rows)["success rate"] == "–" and dict(rows)["deployments (versions put in service)"] == "0"


# --- every KPI on the page and in the Prometheus exposition ---------------------------------------

TEAMS = {"fraud": "risk-ml", "churn": "growth"}
FLEET = RECORDS + [
    rec(4, 0, "model.promoted", "fraud-staging/1"), rec(4, 1, "deploy.started", "fraud-staging/1"),
    rec(4, 30, "deploy.succeeded", "fraud-staging/1", strategy="blue_green",
        timeline=[{"step": "switched", "at": record_time(rec(4, 25, "", ""))}]),
    rec(4, 40, "audit.verified", "ledger", ok=True, records=12, problem=None),
    rec(4, 50, "audit.verified", "ledger", ok=False, records=3, problem="line 4: edited"),
]
UTILISATION = {"samples": 2, "gpu": {"available": False, "reason": "no GPU (nvidia-smi not found)", "gpus": []},
               "replicas": [{"model": "fraud-staging", "version": "1", "replica": 0, "target": "local", "pid": 4242,
                             "samples": 2, "cpu_percent_mean": 12.5, "cpu_percent_max": 20.0, "rss_mb_mean": 100.0,
                             "rss_mb_max": 110.0, "rss_mb_last": 105.0, "gpu_memory_mb": None, "last_at": 1.0,
                             "current": True}]}


def _snapshot(scope: Scope = Scope()):
    evidence = [evidence_completeness(Lineage("fraud-production", "1", {}), FLEET)]
    return build_snapshot(FLEET, scope, TEAMS, serving=["fraud-staging", "churn"],
                          monitor_state=({"fraud-staging": {"active": True, "interval_s": 60}},
                                         {"fraud-staging": 1000.0}),
                          evidence=evidence, utilisation=UTILISATION, now=1050.0)


def _samples(text: str) -> dict[tuple, float]:
    """Every sample of the exposition: (name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_exposition_parses_back_with_every_kpi_labelled_by_model_team_and_environment():
    samples = _samples(exposition(_snapshot()).decode())
    staging = (("environment", "staging"), ("model", "fraud"), ("team", "risk-ml"))
    dev = (("environment", "dev"), ("model", "fraud"), ("team", "risk-ml"))
    churn = (("environment", "dev"), ("model", "churn"), ("team", "growth"))
    assert samples[("modelyard_deployments_total", staging)] == 1
    assert samples[("modelyard_lead_time_seconds", staging)] == 25  # promoted 4T10:00:00 → switched at :25
    assert samples[("modelyard_deployments_total", dev)] == 2
    assert samples[("modelyard_deployment_success_ratio", dev)] == 2 / 3
    assert samples[("modelyard_rollbacks_automatic_total", dev)] == 1
    assert samples[("modelyard_rollbacks_manual_total", dev)] == 1
    assert samples[("modelyard_mttd_seconds", dev)] == 41.5 and samples[("modelyard_mttr_seconds", dev)] == 93.25
    assert samples[("modelyard_deployments_total", churn)] == 1
    assert ("modelyard_deployment_success_ratio", (("environment", "staging"), ("model", "fraud"),
                                                   ("team", "risk-ml"))) in samples
    assert ("modelyard_mttd_seconds", churn) not in samples  # unknown: absent, never 0
    assert samples[("modelyard_model_monitored", staging)] == 1
    assert samples[("modelyard_model_monitored", churn)] == 0
    assert samples[("modelyard_models_monitored_ratio", ())] == 0.5
    assert samples[("modelyard_audit_verify_runs_total", ())] == 2
    assert samples[("modelyard_audit_verify_passed_total", ())] == 1
    assert samples[("modelyard_audit_pass_ratio", ())] == 0.5
    assert samples[("modelyard_evidence_complete_ratio", ())] == 0
    assert samples[("modelyard_version_evidence_complete", (("environment", "production"), ("model", "fraud"),
                                                            ("team", "risk-ml"), ("version", "1")))] == 0
    replica = (*staging[:2], ("replica", "0"), ("team", "risk-ml"), ("version", "1"))
    assert samples[("modelyard_replica_cpu_percent", replica)] == 12.5
    assert samples[("modelyard_replica_memory_rss_bytes", replica)] == 105 * 1024 * 1024
    assert samples[("modelyard_gpu_available", ())] == 0
    assert samples[("modelyard_kpi_source_up", (("source", "prefect"),))] == 1


def test_exposition_of_a_team_leaves_other_teams_out():
    samples = _samples(exposition(_snapshot(Scope(team="growth"))).decode())
    teams = {dict(labels).get("team") for (_, labels) in samples} - {None}
    assert teams == {"growth"}


def test_exposition_is_cached_for_its_ttl():
    calls = []
    clock = [0.0]

    def snapshot():
        calls.append(1)
        return _snapshot()

    cached = CachedExposition(snapshot, ttl_s=15, clock=lambda: clock[0])
    first = cached()
    clock[0] = 10
    assert cached() is first and len(calls) == 1
    clock[0] = 16
    cached()
    assert len(calls) == 2


def test_page_with_a_snapshot_shows_cuts_monitoring_audit_evidence_and_utilisation(tmp_path):
    page = write_kpi_report(FLEET, None, tmp_path / "kpis.html", snapshot=_snapshot())
    parsed = _Page()
    parsed.feed(page.read_text())
    text = " | ".join(parsed.cells)
    assert "serving models monitored | 50.0%" in text
    assert "audit pass rate (scheduled verify runs passed) | 50.0%" in text
    assert "production versions with complete evidence | 0.0%" in text
    assert "risk-ml | 3 | 75.0%" in text  # per team: 3 deployments of 4 attempts
    assert "fraud-production/1 | INCOMPLETE | signature, registered" in text
    assert "fraud-staging v1 r0 | risk-ml | local | 4242 | 2 | 12.5 | 20.0 | 100.0 | 110.0" in text
    assert "no GPU (nvidia-smi not found)" in text
    assert "churn | growth | no |" in text and "no monitor schedule" in text


def _bridge(tmp_path, body: bytes = b"# metrics\n") -> BridgeApp:
    verifier = WebhookVerifier("secret", SeenDeliveries(tmp_path / "seen.sqlite"))
    return BridgeApp(verifier, emit=lambda event: None, audit=lambda *args: None, metrics=lambda: body,
                     metrics_token="kpi-secret")


def _get(app: BridgeApp, headers: dict) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge") as client:
            return await client.get("/metrics", headers=headers)

    return asyncio.run(call())


def test_bridge_metrics_need_the_kpi_token(tmp_path):
    app = _bridge(tmp_path, exposition(_snapshot()))
    assert _get(app, {}).status_code == 401
    refused = _get(app, {"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert _get(app, {"Authorization": "Basic a2tp"}).status_code == 401
    assert app.health()["rejected"]["metrics_unauthorized"] == 3  # counted like any refused request
    answer = _get(app, {"Authorization": "Bearer kpi-secret"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert _samples(answer.text)[("modelyard_audit_verify_runs_total", ())] == 2
