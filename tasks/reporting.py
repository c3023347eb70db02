"""Everything a person looks at: markdown for Prefect artifacts, MLflow and the command line,
the rollout and KPI charts, the KPI page. Plain functions of values; the tasks that publish
them say where (links into MLflow come from ``modelyard.resources.registry``)."""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.catalog import Action
from modelyard.kpis import INCIDENT_MTTD_MEANING, INCIDENT_MTTR_MEANING
from tasks.kpis import LEAD_TIME_MEANING, MTTD_MEANING, MTTR_MEANING, concerns, delivery_kpis, is_redeploy

if TYPE_CHECKING:
    from modelyard.kpi_snapshot import KpiSnapshot
    from tasks.evaluation import Decision
    from tasks.monitoring import WindowVerdict
    from tasks.validation import ValidationReport


# --- Prefect artifacts ------------------------------------------------------------------------

@dataclass(frozen=True)
class Artifact:
    """A markdown artifact of a flow run: its key (the latest one per key shows in the UI)."""

    key: str
    markdown: str
    description: str | None = None


def artifact_key(model: str, kind: str) -> str:
    """The key of a model's ``kind`` of artifact: Prefect allows lowercase letters, digits, dashes."""
    return f"{model}-{kind}".lower().replace("_", "-").replace(".", "-")


def publish(artifact: Artifact) -> None:
    """Attach ``artifact`` to the running flow or task run."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=artifact.key, markdown=artifact.markdown, description=artifact.description)


def _cell(value: Any, limit: int | None = 80) -> str:
    """``value`` as one markdown table cell: pipes escaped, one line, at most ``limit`` characters."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def _image(alt: str, url: str | None) -> str:
    return f"![{alt}]({url})" if url else ""


# --- the rollout ------------------------------------------------------------------------------

# How a rollout ended, by the ledger action that records it (the KPI page counts the same).
OUTCOMES: dict[Action, str] = {
    Action.DEPLOY_SUCCEEDED: "succeeded",
    Action.DEPLOY_ROLLED_BACK: "rolled back by itself",
    Action.AUTOMATIC_ROLLBACK: "rolled back on an alert",
    Action.MANUAL_ROLLBACK: "rolled back by hand",
}
COLOURS = {"succeeded": "#2ca02c", "rolled back by itself": "#d62728", "rolled back on an alert": "#8c564b",
           "rolled back by hand": "#ff7f0e"}


@dataclass(frozen=True)
class RolloutSummary:
    """One rollout as every report shows it, from a ``Rollout``, a ``RolloutFailed`` or a ledger record."""

    model: str
    version: str
    strategy: str
    action: Action  # how it ended, as the ledger records it
    timeline: list[dict]
    previous: str | None = None
    endpoint: str | None = None
    rollback_s: float | None = None
    reason: str | None = None

    @property
    def outcome(self) -> str:
        return OUTCOMES[self.action]

    @classmethod
    def of(cls, rollout, action: Action, reason: str | None = None) -> RolloutSummary:
        """A finished ``deployments.strategies.Rollout``."""
        return cls(rollout.model, rollout.version, rollout.strategy, action, rollout.timeline, rollout.previous,
                   rollout.endpoint_url or None, rollout.rollback_s, reason)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RolloutSummary:
        """The ledger record that ended a rollout (an action of ``OUTCOMES``)."""
        model, _, version = record["subject"].partition("/")
        details = record["details"]
        return cls(model, version, details.get("strategy", "-"), Action(record["action"]), details.get("timeline", []),
                   details.get("from_version"), details.get("endpoint"), details.get("rollback_s"),
                   details.get("reason"))


def _clock(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def timeline_markdown(summary: RolloutSummary, chart_url: str | None = None) -> str:
    """The rollout, step by step: the one rendering the CLI, the Prefect artifact and MLflow show."""
    facts = [f"Previous version: {'v' + summary.previous if summary.previous else 'none'}",
             f"endpoint {summary.endpoint or '-'}"]
    if summary.rollback_s is not None:
        facts.append(f"rollback took {summary.rollback_s:.3f} s")
    lines = [f"# Rollout of {summary.model} v{summary.version} ({summary.strategy}): {summary.outcome}", ""]
    if summary.reason:
        lines += [f"Reason: {summary.reason}", ""]
    lines += ["; ".join(facts), ""]
    if chart_url:
        lines += [_image(f"rollout of {summary.model} v{summary.version}", chart_url), ""]
    lines += ["| t (s) | at (UTC) | step | result | traffic | detail |", "|---|---|---|---|---|---|"]
    lines += [f"| {s['t_s']:.3f} | {_clock(s.get('at'))} | {_cell(s['step'], None)} | "
              f"{'ok' if s['ok'] else '**FAILED**'} | "
              f"{', '.join(f'v{v}: {w}%' for v, w in s.get('weights', {}).items()) or '-'} | "
              f"{_cell(s['detail'], None)} |" for s in summary.timeline]
    return "\n".join(lines) + "\n"


def rollout_artifact(summary: RolloutSummary, chart_url: str | None) -> Artifact:
    return Artifact(artifact_key(summary.model, "rollout"), timeline_markdown(summary, chart_url),
                    f"{summary.model} v{summary.version}: {summary.outcome}")


def rollout_chart(summary: RolloutSummary, path: Path) -> Path:
    """The new version's share of traffic over time, every gate verdict marked where it fell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline, version = summary.timeline, summary.version
    times, shares = [0.0], [0.0]
    for step in timeline:
        weights = step.get("weights")
        if weights is not None:
            times.append(step["t_s"])
            shares.append(float(weights.get(version, 0)))
    end = max([s["t_s"] for s in timeline] + [times[-1]]) + 0.5
    times.append(end)
    shares.append(shares[-1])
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    ax.step(times, shares, where="post", color="#1f77b4", linewidth=2, label=f"v{version} share of traffic")
    for step in timeline:
        if step["step"].startswith(("gates", "shadow gates", "gate failed", "switch probe", "smoke")):
            colour = "#2ca02c" if step["ok"] else "#d62728"
            ax.axvline(step["t_s"], color=colour, linestyle="--", linewidth=1)
            ax.annotate(step["step"], (step["t_s"], 97), rotation=90, fontsize=7, color=colour,
                        ha="right", va="top")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds since the rollout started")
    ax.set_ylabel("% of requests")
    ax.set_title(f"{summary.model}: v{summary.previous or '-'} → v{version} — {summary.outcome}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --- delivery KPIs ----------------------------------------------------------------------------

LABELS = {
    "deployments": "deployments (versions put in service)",
    "deploy_attempts": "deployment attempts (succeeded + rolled back by itself)",
    "deploys_started": "deploy runs started",
    "success_rate": "success rate",
    "deployments_per_day": "deployment frequency (per day)",
    "lead_time_s": f"mean lead time (s; {LEAD_TIME_MEANING})",
    "lead_time_max_s": "longest lead time (s)",
    "rollbacks": "rollbacks (all)",
    "automatic_rollbacks": "automatic rollbacks (a failed gate or an alert)",
    "manual_rollbacks": "manual rollbacks (by hand)",
    "recoveries": "drift/performance loops closed",
    "mttd_s": "mean time to detect (s)",
    "mttr_s": "mean time to recover (s)",
    "mttd_source": "MTTD/MTTR measured from",
    "incidents": "incidents",
    "incidents_open": "incidents open or acknowledged",
    "incidents_resolved": "incidents resolved",
    "monitored_rate": "serving models monitored",
    "audit_pass_rate": "audit pass rate (scheduled verify runs passed)",
    "evidence_rate": "production versions with complete evidence",
}
PERCENT_KEYS = frozenset({"success_rate", "monitored_rate", "audit_pass_rate", "evidence_rate"})


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
            for r in records if r["action"] == Action.KPI_RECOVERED and concerns(r, model)]


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
               color="#9467bd", label=f"detect ({MTTD_MEANING})")
    right.barh([p + 0.2 for p in positions], [loop.get("mttr_s") or 0 for loop in loops], height=0.4,
               color="#1f77b4", label=f"recover ({MTTR_MEANING})")
    right.set_yticks(list(positions), names, fontsize=7)
    right.set_ylim(-0.8, max(len(loops), 2) - 0.2)
    right.set_xlabel("seconds")
    right.set_title("closed loops: detection and recovery", fontsize=10)
    right.legend(fontsize=7, loc="lower right")
    if not loops:
        right.text(0.5, 0.5, "no drift or performance loop closed yet", ha="center", va="center",
                   transform=right.transAxes)
    return _save(fig, path)


def _shown(value: Any, key: str) -> str:
    if value is None:
        return "–"
    if key in PERCENT_KEYS:
        return f"{value:.1%}"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def kpi_rows(numbers: dict[str, Any]) -> list[tuple[str, str]]:
    """Each KPI's label and its value as shown (the CLI, the markdown and the page agree)."""
    return [(LABELS.get(key, key), _shown(value, key)) for key, value in numbers.items()]


def kpi_markdown(numbers: dict[str, Any], title: str) -> str:
    rows = "\n".join(f"| {label} | {shown} |" for label, shown in kpi_rows(numbers))
    return f"# {title}\n\n| KPI | value |\n|---|---|\n{rows}\n"


def kpi_artifact(records: list[dict[str, Any]], model: str, version: str, chart_url: str | None,
                 page_url: str | None) -> Artifact:
    """The model's KPIs with the chart and a link to the page, then every model's."""
    links = f"\n{_image(f'delivery KPIs of {model}', chart_url)}\n\n[HTML report]({page_url})\n\n" if page_url else ""
    markdown = (kpi_markdown(delivery_kpis(records, model), f"Delivery KPIs of {model}") + links
                + kpi_markdown(delivery_kpis(records), "Delivery KPIs of every model").replace("# ", "## ", 1))
    return Artifact("delivery-kpis", markdown, f"after {model} v{version}")


# The columns of a cut (per model, team or environment), by delivery KPI key.
CUT_COLUMNS = ("deployments", "success_rate", "deployments_per_day", "lead_time_s", "automatic_rollbacks",
               "manual_rollbacks", "mttd_s", "mttr_s")
CUT_HEADERS = ("deployments", "success rate", "per day", "lead time s", "auto rollbacks", "manual rollbacks",
               "MTTD s", "MTTR s")


def headline(snapshot: KpiSnapshot) -> dict[str, Any]:
    """The mission's KPIs beside delivery: % monitored, audit pass rate, complete evidence."""
    evidence = snapshot.evidence_summary
    return {"monitored_rate": snapshot.monitoring["monitored_rate"] if snapshot.monitoring else None,
            "audit_pass_rate": snapshot.audit["audit_pass_rate"],
            "evidence_rate": evidence["evidence_rate"] if evidence else None}


def cut_rows(snapshot: KpiSnapshot, by: str) -> list[list[str]]:
    """One row per model (registered, team, environment), team or environment: its delivery KPIs as shown."""
    keys = ("registered", "team", "environment") if by == "model" else (by,)
    return [[str(row[k]) for k in keys] + [_shown(row.get(c), c) for c in CUT_COLUMNS] for row in snapshot.cuts[by]]


def monitoring_rows(snapshot: KpiSnapshot) -> list[list[str]]:
    """Per serving model: scheduled, interval, last monitor run's age, monitored, why not."""
    if snapshot.monitoring is None:
        return []
    return [[row["model"], row["team"], "yes" if row["scheduled"] else "no", _shown(row["interval_s"], "interval_s"),
             _shown(row["last_run_age_s"], "age"), "yes" if row["monitored"] else "NO", row["reason"] or ""]
            for row in snapshot.monitoring["models"]]


def evidence_rows(snapshot: KpiSnapshot) -> list[list[str]]:
    return [[e.subject, "complete" if e.complete else "INCOMPLETE", ", ".join(e.missing) or "–"]
            for e in snapshot.evidence or []]


def utilisation_rows(snapshot: KpiSnapshot) -> list[list[str]]:
    """Per replica: its pid, samples, mean/max CPU %, mean/max RSS MB, GPU MB."""
    return [[f"{row['model']} v{row['version']} r{row['replica']}", row["team"], row["target"], str(row["pid"]),
             str(row["samples"]), _shown(row["cpu_percent_mean"], "cpu"), _shown(row["cpu_percent_max"], "cpu"),
             _shown(row["rss_mb_mean"], "rss"), _shown(row["rss_mb_max"], "rss"),
             _shown(row.get("gpu_memory_mb"), "gpu")]
            for row in snapshot.utilisation.get("replicas", [])]


def gpu_line(snapshot: KpiSnapshot) -> str:
    gpu = snapshot.utilisation.get("gpu") or {}
    if not gpu.get("available"):
        return gpu.get("reason") or "no GPU"
    return "; ".join(f"GPU {g['index']} {g['name']}: {_shown(g['utilization_percent'], 'gpu')}% busy, "
                     f"{_shown(g['memory_used_mb'], 'gpu')} of {_shown(g['memory_total_mb'], 'gpu')} MB"
                     for g in gpu.get("gpus", []))


def _table(headers: tuple[str, ...] | list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def snapshot_html(snapshot: KpiSnapshot) -> str:
    """The page's sections beyond delivery: the cuts, monitoring, audit, evidence, utilisation."""
    unavailable = "".join(f"<li>{html.escape(source)}: {html.escape(reason)}</li>"
                          for source, reason in snapshot.unavailable.items())
    audit = snapshot.audit
    return f"""
<h2>The mission's KPIs</h2>
<table><tr><th>KPI</th><th>value</th></tr>{"".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(shown)}</td></tr>"
                                                for label, shown in kpi_rows(headline(snapshot)))}</table>
{f"<p>Not answering (their KPIs are left out):</p><ul>{unavailable}</ul>" if unavailable else ""}
<h2>Per team</h2>
{_table(("team", *CUT_HEADERS), cut_rows(snapshot, "team"), "no deployment recorded")}
<h2>Per environment</h2>
{_table(("environment", *CUT_HEADERS), cut_rows(snapshot, "environment"), "no deployment recorded")}
<h2>Per model</h2>
{_table(("registered model", "team", "environment", *CUT_HEADERS), cut_rows(snapshot, "model"), "no model")}
<h2>Serving models monitored</h2>
<p>Monitored: an active monitor schedule and a monitor run completed within 2 × its interval.</p>
{_table(("model", "team", "scheduled", "interval s", "last run s ago", "monitored", "why not"),
        monitoring_rows(snapshot), "Prefect did not answer" if snapshot.monitoring is None else "nothing serves")}
<h2>Audit</h2>
<p>Scheduled <code>audit verify</code> runs: {audit["audit_runs"]}, passed {audit["audit_passed"]};
latest {html.escape(str(audit["audit_last_at"] or "never"))}{
    "" if audit["audit_last_problem"] is None else ": " + html.escape(str(audit["audit_last_problem"]))}.</p>
{_table(("production version", "evidence", "missing"), evidence_rows(snapshot),
        "MLflow did not answer" if snapshot.evidence is None else "no production version")}
<h2>Resource utilisation (recent samples)</h2>
<p>{html.escape(gpu_line(snapshot))}</p>
{_table(("replica", "team", "target", "pid", "samples", "CPU % mean", "CPU % max", "RSS MB mean", "RSS MB max",
         "GPU MB"), utilisation_rows(snapshot), "no sample yet (the watchdog samples every 30 s)")}
"""


def kpi_html(records: list[dict[str, Any]], model: str | None = None, chart_png: bytes | None = None,
             recent: int = 25, snapshot: KpiSnapshot | None = None) -> str:
    """A page that stands alone (chart embedded): the KPIs, the chart, the latest rollouts; with
    a ``snapshot``, the cuts per team and environment, monitoring, audit and utilisation too."""
    scope = f"of {model}" if model else "of every model"
    if snapshot is not None:
        scope = f"of {snapshot.scope.describe()}"
    numbers = snapshot.delivery if snapshot is not None else delivery_kpis(records, model)
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(shown)}</td></tr>"
                   for label, shown in kpi_rows(numbers))
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
    from_incidents = numbers.get("mttd_source") == "incidents"
    mttd = INCIDENT_MTTD_MEANING if from_incidents else MTTD_MEANING
    mttr = INCIDENT_MTTR_MEANING if from_incidents else MTTR_MEANING
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelyard KPIs {html.escape(scope)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:80em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}th{{background:#f4f4f4}}img{{max-width:100%}}</style>
</head><body>
<h1>Delivery KPIs {html.escape(scope)}</h1>
<p>From the audit ledger ({len(records)} records), generated {generated}.
MTTD: {html.escape(mttd)}; MTTR: {html.escape(mttr)}; lead time: {html.escape(LEAD_TIME_MEANING)}.</p>
<table><tr><th>KPI</th><th>value</th></tr>{rows}</table>
{image}
{snapshot_html(snapshot) if snapshot is not None else ""}
<h2>Closed loops (alert → retrain → new version serving)</h2>
<table><tr><th>version put in service</th><th>alert</th><th>MTTD s</th><th>MTTR s</th><th>retrain s</th></tr>{loops}</table>
<h2>Latest rollouts</h2>
<table><tr><th>ended</th><th>version</th><th>outcome</th><th>strategy</th><th>reason</th></tr>{events}</table>
</body></html>
"""


def write_kpi_report(records: list[dict[str, Any]], model: str | None, path: Path,
                     snapshot: KpiSnapshot | None = None) -> Path:
    """The HTML page at ``path`` (its chart beside it as ``<name>.png`` and embedded in it)."""
    chart = kpi_chart(records, model, path.with_suffix(".png"))
    path.write_text(kpi_html(records, model, chart.read_bytes(), snapshot=snapshot))
    return path


# --- the monitor's verdict --------------------------------------------------------------------

def verdict_markdown(verdict: WindowVerdict, report_url: str | None = None) -> str:
    lines = [f"# Monitor: {verdict.model} v{verdict.version} — {verdict.status.upper()}", "",
             f"Window {verdict.window_start} → {verdict.window_end}, {verdict.rows} rows.", ""]
    if verdict.alerts:
        lines += ["## Alerts", ""] + [f"- **{a.event}**: {a.reason}" for a in verdict.alerts] + [""]
    if verdict.data_valid is not None:
        lines.append(f"- Data valid (GX suite): **{verdict.data_valid}** "
                     f"({verdict.validation.get('failed', 0)} of {verdict.validation.get('evaluated', 0)} failed)")
    if verdict.drift:
        d = verdict.drift
        lines.append(f"- Drift: dataset drift **{d['dataset_drift']}**, {d['drifted_columns']}/{d['n_columns']} "
                     f"features (share {d['drift_share']:.2f}); {d.get('error_bound', '')}")
        if d.get("prediction"):
            p = d["prediction"]
            lines.append(f"- Prediction drift: **{p['drifted']}** ({p['method']} {p['score']:.4g}, threshold {p['threshold']:.4g})")
        lines += ["", "| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        lines += [f"| {f['column']} | {f['method']} | {f['score']:.4g} | {f['threshold']:.4g} | {'**yes**' if f['drifted'] else 'no'} |"
                  for f in d["features"][:10]]
        lines.append("")
    if verdict.performance is not None:
        p = verdict.performance
        lines.append(f"- Performance: {p.metric} = {p.value if p.value is None else round(p.value, 4)} on {p.rows} "
                     f"labelled rows (evaluation {p.baseline if p.baseline is None else round(p.baseline, 4)}); "
                     f"degraded **{p.degraded}**")
    if verdict.service is not None:
        s = verdict.service
        lines.append(f"- Service: {s.requests} requests, error rate {s.error_rate:.4f}, p99 "
                     f"{'n/a' if s.p99_ms is None else f'{s.p99_ms:.1f} ms'}; degraded **{s.degraded}**")
    if report_url:
        lines += ["", f"[Evidently report]({report_url})"]
    return "\n".join(lines) + "\n"


def monitor_artifact(verdict: WindowVerdict, report_url: str | None) -> Artifact:
    return Artifact(artifact_key(verdict.model, "monitor"), verdict_markdown(verdict, report_url),
                    f"{verdict.model} v{verdict.version}: {verdict.status}")


# --- the pipeline: validation, evaluation, model card, smoke ------------------------------------

def _format_percent(percent: float | None) -> str:
    if percent is None or (isinstance(percent, float) and math.isnan(percent)):
        return ""
    return f" ({percent:.2f}%)"


def report_markdown(report: ValidationReport, title: str) -> str:
    """A data validation: verdict, then one row per failed expectation."""
    passed = report.evaluated - len(report.failed)
    verdict = "PASSED" if report.success else "FAILED"
    lines = [f"# {title}", "", f"**{verdict}**: {passed} of {report.evaluated} expectations held.", ""]
    if report.failed:
        lines += ["| Expectation | Column | Unexpected | Examples | Details |", "|---|---|---|---|---|"]
        for failure in report.failed:
            count = "" if failure.unexpected_count is None else str(failure.unexpected_count)
            examples = ", ".join(_cell(repr(e), 30) for e in failure.examples)
            lines.append(
                f"| `{failure.expectation}` | {_cell(failure.column or '(table)')} | "
                f"{count}{_format_percent(failure.unexpected_percent)} | {examples} | "
                f"{_cell(failure.details, 120)} |"
            )
    else:
        lines.append("Every expectation held.")
    return "\n".join(lines) + "\n"


def validation_artifact(model: str, report: ValidationReport, source: str) -> Artifact:
    return Artifact(artifact_key(model, "validation"), report_markdown(report, f"Validation of {model} data ({source})"))


def decision_markdown(model: str, version: str, decision: Decision, challenger: dict, champion: dict | None) -> str:
    """The policy's checks on a challenger, then its metrics beside the champion's."""
    verdict = "PASSED — challenger alias set" if decision.passed else "REJECTED — registry aliases unchanged"
    lines = [f"# Evaluation of {model} v{version}: {verdict}", "",
             f"Champion: {'v' + decision.champion_version if decision.champion_version else 'none (absolute thresholds only)'}", "",
             "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.detail} |" for c in decision.checks]
    lines += ["", "| metric | challenger | champion |", "|---|---|---|"]
    for metric, value in sorted(challenger.items()):
        old = champion.get(metric) if champion else None
        lines.append(f"| {metric} | {value:.4f} | {'' if old is None else f'{old:.4f}'} |")
    return "\n".join(lines) + "\n"


def evaluation_artifact(model: str, version: str, decision: Decision, challenger: dict,
                        champion: dict | None) -> Artifact:
    return Artifact(artifact_key(model, "evaluation"), decision_markdown(model, version, decision, challenger, champion))


def model_card_artifact(model: str, card: str) -> Artifact:
    return Artifact(artifact_key(model, "model-card"), card)


def environment_markdown(facts: dict[str, Any]) -> str:
    """What a smoke run saw, as a table."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in facts.items())
    return f"# modelyard smoke run\n\n| what | value |\n|---|---|\n{rows}\n"


def smoke_artifact(facts: dict[str, Any]) -> Artifact:
    return Artifact("smoke-environment", environment_markdown(facts))
