"""Delivery KPIs as something to look at: a chart and a self-contained HTML page.

The numbers come from ``tasks/kpis.py`` (the audit ledger, so they are as verifiable as the
ledger). The chart shows what a table hides: whether deployments fail in streaks, and how long
each drift → retrain → canary loop took from detection to recovery. The deploy and rollback
flows attach it to their Prefect runs; ``modelyard kpis --html`` and the demo write the page.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.kpis import concerns, delivery_kpis, is_redeploy

# What the chart and the page count, by ledger action.
OUTCOMES = {"deploy.succeeded": "succeeded", "deploy.rolled_back": "rolled back by itself",
            "deploy.manual_rollback": "rolled back by hand"}
COLOURS = {"succeeded": "#2ca02c", "rolled back by itself": "#d62728", "rolled back by hand": "#ff7f0e"}
LABELS = {
    "deployments": "deployments (versions put in service)",
    "deploy_attempts": "deployment attempts (succeeded + rolled back by itself)",
    "deploys_started": "deploy runs started",
    "success_rate": "success rate",
    "deployments_per_day": "deployment frequency (per day)",
    "rollbacks": "rollbacks (all)",
    "automatic_rollbacks": "rollbacks by a failed gate",
    "recoveries": "drift/performance loops closed",
    "mttd_s": "mean time to detect (s)",
    "mttr_s": "mean time to recover (s)",
}


def _day(record: dict) -> str:
    return datetime.fromisoformat(record["time"]).astimezone(UTC).strftime("%Y-%m-%d")


def deployments_by_day(records: list[dict[str, Any]], model: str | None = None) -> dict[str, Counter]:
    """Per UTC day, how many rollouts ended in each outcome (re-deploys of the serving version
    excluded, as in the KPIs)."""
    days: dict[str, Counter] = {}
    for record in records:
        outcome = OUTCOMES.get(record["action"])
        if outcome is None or not concerns(record, model) or is_redeploy(record):
            continue
        days.setdefault(_day(record), Counter())[outcome] += 1
    return dict(sorted(days.items()))


def recoveries(records: list[dict[str, Any]], model: str | None = None) -> list[dict[str, Any]]:
    """Each closed loop: the version it put in service, MTTD, MTTR and how long the retrain took."""
    return [{"subject": r["subject"], "time": r["time"], **r["details"]}
            for r in records if r["action"] == "kpi.recovered" and concerns(r, model)]


def kpi_chart(records: list[dict[str, Any]], model: str | None, path: Path) -> Path:
    """Two panels: rollouts per day by outcome; detection and recovery time of each loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    days = deployments_by_day(records, model)
    loops = recoveries(records, model)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110)
    bottoms = [0] * len(days)
    for outcome, colour in COLOURS.items():
        counts = [days[d].get(outcome, 0) for d in days]
        left.bar(list(days), counts, bottom=bottoms, color=colour, label=outcome)
        bottoms = [b + c for b, c in zip(bottoms, counts, strict=True)]
    left.set_title("rollouts per day (UTC)", fontsize=10)
    left.set_ylabel("rollouts")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.tick_params(axis="x", labelrotation=30, labelsize=7)
    left.legend(fontsize=7, loc="upper left")
    if not days:
        left.text(0.5, 0.5, "no rollout yet", ha="center", va="center", transform=left.transAxes)
    names = [loop["subject"] for loop in loops]
    positions = range(len(loops))
    right.barh([p - 0.2 for p in positions], [loop.get("mttd_s") or 0 for loop in loops], height=0.4,
               color="#9467bd", label="detect (first drifted request → alert)")
    right.barh([p + 0.2 for p in positions], [loop.get("mttr_s") or 0 for loop in loops], height=0.4,
               color="#1f77b4", label="recover (alert → new version on 100%)")
    right.set_yticks(list(positions), names, fontsize=7)
    right.set_ylim(-0.8, max(len(loops), 2) - 0.2)
    right.set_xlabel("seconds")
    right.set_title("closed loops: detection and recovery", fontsize=10)
    right.legend(fontsize=7, loc="lower right")
    if not loops:
        right.text(0.5, 0.5, "no drift or performance loop closed yet", ha="center", va="center",
                   transform=right.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _shown(value: Any, key: str) -> str:
    if value is None:
        return "–"
    if key == "success_rate":
        return f"{value:.1%}"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def kpi_markdown(numbers: dict[str, Any], title: str) -> str:
    rows = "\n".join(f"| {LABELS.get(key, key)} | {_shown(value, key)} |" for key, value in numbers.items())
    return f"# {title}\n\n| KPI | value |\n|---|---|\n{rows}\n"


def kpi_html(records: list[dict[str, Any]], model: str | None = None, chart_png: bytes | None = None,
             recent: int = 25) -> str:
    """A page that stands alone (chart embedded): the KPIs, the chart, the latest rollouts."""
    numbers = delivery_kpis(records, model)
    scope = f"of {model}" if model else "of every model"
    rows = "".join(f"<tr><td>{html.escape(LABELS.get(k, k))}</td><td>{html.escape(_shown(v, k))}</td></tr>"
                   for k, v in numbers.items())
    image = (f'<img alt="rollouts per day and closed loops" src="data:image/png;base64,'
             f'{base64.b64encode(chart_png).decode()}">' if chart_png else "")
    ended = [r for r in records if r["action"] in OUTCOMES and concerns(r, model)][-recent:]
    events = "".join(
        f"<tr><td>{html.escape(r['time'])}</td><td>{html.escape(r['subject'])}</td>"
        f"<td style='color:{COLOURS[OUTCOMES[r['action']]]}'>{html.escape(OUTCOMES[r['action']])}</td>"
        f"<td>{html.escape(str(r['details'].get('strategy', '')))}</td>"
        f"<td>{html.escape(str(r['details'].get('reason', '')))}</td></tr>"
        for r in reversed(ended))
    loops = "".join(
        f"<tr><td>{html.escape(loop['subject'])}</td><td>{html.escape(str(loop.get('alert', '')))}</td>"
        f"<td>{_shown(loop.get('mttd_s'), 'mttd_s')}</td><td>{_shown(loop.get('mttr_s'), 'mttr_s')}</td>"
        f"<td>{_shown(loop.get('retrain_s'), 'retrain_s')}</td></tr>"
        for loop in recoveries(records, model))
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelyard delivery KPIs {html.escape(scope)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}th{{background:#f4f4f4}}img{{max-width:100%}}</style>
</head><body>
<h1>Delivery KPIs {html.escape(scope)}</h1>
<p>From the audit ledger ({len(records)} records), generated {generated}.</p>
<table><tr><th>KPI</th><th>value</th></tr>{rows}</table>
{image}
<h2>Closed loops (alert → retrain → new version serving)</h2>
<table><tr><th>version put in service</th><th>alert</th><th>MTTD s</th><th>MTTR s</th><th>retrain s</th></tr>{loops}</table>
<h2>Latest rollouts</h2>
<table><tr><th>ended</th><th>version</th><th>outcome</th><th>strategy</th><th>reason</th></tr>{events}</table>
</body></html>
"""


def write_kpi_report(records: list[dict[str, Any]], model: str | None, path: Path) -> Path:
    """The HTML page at ``path`` (its chart beside it as ``<name>.png`` and embedded in it)."""
    chart = kpi_chart(records, model, path.with_suffix(".png"))
    path.write_text(kpi_html(records, model, chart.read_bytes()))
    return path


def publish_kpi_report(settings, model: str, version: str) -> str:
    """Write the model's page and chart, log both on the version's MLflow run (``kpis/``), and
    return markdown for a Prefect artifact: the model's KPIs with the chart, then every model's."""
    import tempfile

    from modelyard.ledger import ledger_from_settings
    from tasks.registry import tracking_client

    records = ledger_from_settings(settings).records()
    client = tracking_client(settings)
    run_id = client.get_model_version(model, version).run_id
    links = ""
    if run_id:
        with tempfile.TemporaryDirectory() as tmp:
            page = write_kpi_report(records, model, Path(tmp) / "delivery-kpis.html")
            client.log_artifact(run_id, str(page), "kpis")
            client.log_artifact(run_id, str(page.with_suffix(".png")), "kpis")
        base = f"{settings.mlflow_url}/get-artifact?run_uuid={run_id}&path=kpis/delivery-kpis"
        links = f"\n![delivery KPIs of {model}]({base}.png)\n\n[HTML report]({base}.html)\n\n"
    return (kpi_markdown(delivery_kpis(records, model), f"Delivery KPIs of {model}") + links
            + kpi_markdown(delivery_kpis(records), "Delivery KPIs of every model").replace("# ", "## ", 1))
