"""The delivery KPI report: a page an auditor can open, built from ledger records alone."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

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
