"""The KPIs in the Prometheus text format, for any scraper: ``modelyard kpis --prometheus`` and
the bridge's ``GET /metrics``. Built with prometheus_client from a ``KpiSnapshot``; labels
``model`` (the spec's name), ``team``, ``environment``. A KPI that is unknown (no deployment
yet, a source that did not answer) has no sample: absent, never zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from modelyard.environments import split_environment
from modelyard.kpi_snapshot import KpiSnapshot
from modelyard.kpis import team_of

LABELS = ["model", "team", "environment"]
CACHE_S = 15.0
MB = 1024 * 1024

# (key in the delivery KPIs, metric name, help, kind, scale)
DELIVERY_METRICS = [
    ("deployments", "modelyard_deployments", "Versions put in service (re-deploys of the serving one excluded).", "counter", 1),
    ("deploy_attempts", "modelyard_deployment_attempts", "Deployments that succeeded or rolled back by themselves.", "counter", 1),
    ("success_rate", "modelyard_deployment_success_ratio", "Share of deployment attempts that succeeded.", "gauge", 1),
    ("deployments_per_day", "modelyard_deployments_per_day", "Deployment frequency over the ledger's span.", "gauge", 1),
    ("lead_time_s", "modelyard_lead_time_seconds", "Mean lead time: champion alias set to 100% of traffic.", "gauge", 1),
    ("lead_time_max_s", "modelyard_lead_time_max_seconds", "Longest lead time.", "gauge", 1),
    ("automatic_rollbacks", "modelyard_rollbacks_automatic", "Rollbacks a failed gate or an alert made.", "counter", 1),
    ("manual_rollbacks", "modelyard_rollbacks_manual", "Rollbacks an operator made.", "counter", 1),
    ("mttd_s", "modelyard_mttd_seconds", "Mean time to detect.", "gauge", 1),
    ("mttr_s", "modelyard_mttr_seconds", "Mean time to recover.", "gauge", 1),
    ("incidents", "modelyard_incidents", "Incidents opened (drift, performance, data, service, replica).", "counter", 1),
    ("incidents_open", "modelyard_incidents_open", "Incidents open or acknowledged now.", "gauge", 1),
]


def _family(name: str, help_text: str, kind: str, labels: list[str]):
    return (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=labels)


class KpiCollector(Collector):
    """One snapshot's KPIs as metric families (a collector of a fresh registry: nothing global)."""

    def __init__(self, snapshot: KpiSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        yield from self._delivery(snap)
        yield from self._monitoring(snap)
        yield from self._audit(snap)
        yield from self._evidence(snap)
        yield from self._utilisation(snap)
        up = GaugeMetricFamily("modelyard_kpi_source_up", "Whether a KPI source answered (0: its KPIs are absent).",
                               labels=["source"])
        for source in ("mlflow", "prefect"):
            up.add_metric([source], 0.0 if source in snap.unavailable else 1.0)
        yield up
        yield GaugeMetricFamily("modelyard_kpi_snapshot_timestamp_seconds", "When these KPIs were computed.",
                                value=snap.at)

    @staticmethod
    def _delivery(snap: KpiSnapshot) -> Iterator[Any]:
        for key, name, help_text, kind, scale in DELIVERY_METRICS:
            family = _family(name, help_text, kind, LABELS)
            for row in snap.cuts["model"]:
                if row.get(key) is not None:
                    family.add_metric([row["model"], row["team"], row["environment"]], float(row[key]) * scale)
            yield family

    @staticmethod
    def _monitoring(snap: KpiSnapshot) -> Iterator[Any]:
        if snap.monitoring is None:
            return
        per_model = GaugeMetricFamily("modelyard_model_monitored", "A serving model with an active monitor schedule "
                                      "and a monitor run within 2 × its interval (1) or not (0).", labels=LABELS)
        for row in snap.monitoring["models"]:
            per_model.add_metric([split_environment(row["model"])[0], row["team"], row["environment"]],
                                 1.0 if row["monitored"] else 0.0)
        yield per_model
        if snap.monitoring["monitored_rate"] is not None:
            yield GaugeMetricFamily("modelyard_models_monitored_ratio", "Share of serving models monitored.",
                                    value=snap.monitoring["monitored_rate"])

    @staticmethod
    def _audit(snap: KpiSnapshot) -> Iterator[Any]:
        audit = snap.audit
        yield CounterMetricFamily("modelyard_audit_verify_runs", "Scheduled audit verify runs.", value=audit["audit_runs"])
        yield CounterMetricFamily("modelyard_audit_verify_passed", "Audit verify runs that passed.",
                                  value=audit["audit_passed"])
        if audit["audit_pass_rate"] is not None:
            yield GaugeMetricFamily("modelyard_audit_pass_ratio", "Audit verify runs passed, of all.",
                                    value=audit["audit_pass_rate"])

    @staticmethod
    def _evidence(snap: KpiSnapshot) -> Iterator[Any]:
        if snap.evidence is None:
            return
        version = GaugeMetricFamily("modelyard_version_evidence_complete", "A production version with complete "
                                    "evidence (1) or not (0).", labels=[*LABELS, "version"])
        for evidence in snap.evidence:
            registered, _, number = evidence.subject.partition("/")
            model, env = split_environment(registered)
            version.add_metric([model, team_of(registered, snap.teams), env, number], 1.0 if evidence.complete else 0.0)
        yield version
        summary = snap.evidence_summary
        if summary and summary["evidence_rate"] is not None:
            yield GaugeMetricFamily("modelyard_evidence_complete_ratio", "Production versions with complete evidence, "
                                    "of all production versions.", value=summary["evidence_rate"])

    @staticmethod
    def _utilisation(snap: KpiSnapshot) -> Iterator[Any]:
        labels = [*LABELS, "version", "replica"]
        families = {
            "cpu_percent_mean": GaugeMetricFamily("modelyard_replica_cpu_percent", "Mean CPU % of a serving replica "
                                                  "over the recent samples (100 = one core).", labels=labels),
            "cpu_percent_max": GaugeMetricFamily("modelyard_replica_cpu_percent_max", "Highest sampled CPU % of a "
                                                 "serving replica.", labels=labels),
            "rss_mb_last": GaugeMetricFamily("modelyard_replica_memory_rss_bytes", "Resident memory of a serving "
                                             "replica at the latest sample.", labels=labels),
            "rss_mb_max": GaugeMetricFamily("modelyard_replica_memory_rss_max_bytes", "Highest sampled resident "
                                            "memory of a serving replica.", labels=labels),
            "gpu_memory_mb": GaugeMetricFamily("modelyard_replica_gpu_memory_bytes", "GPU memory a serving replica's "
                                               "process uses (nvidia-smi).", labels=labels),
        }
        for row in snap.utilisation.get("replicas", []):
            if not row.get("current", True):
                continue
            values = [split_environment(row["model"])[0], row["team"], row["environment"], str(row["version"]),
                      str(row["replica"])]
            for key, family in families.items():
                value = row.get(key)
                if value is not None:
                    family.add_metric(values, float(value) * (MB if key.startswith(("rss", "gpu")) else 1))
        yield from families.values()
        gpu = snap.utilisation.get("gpu") or {}
        if gpu.get("available"):
            util = GaugeMetricFamily("modelyard_gpu_utilization_percent", "GPU utilisation (nvidia-smi).",
                                     labels=["gpu", "name"])
            memory = GaugeMetricFamily("modelyard_gpu_memory_used_bytes", "GPU memory used (nvidia-smi).",
                                       labels=["gpu", "name"])
            for device in gpu.get("gpus", []):
                if device.get("utilization_percent") is not None:
                    util.add_metric([device["index"], device["name"]], device["utilization_percent"])
                if device.get("memory_used_mb") is not None:
                    memory.add_metric([device["index"], device["name"]], device["memory_used_mb"] * MB)
            yield util
            yield memory
        yield GaugeMetricFamily("modelyard_gpu_available", "Whether nvidia-smi reported GPUs on the serving host.",
                                value=1.0 if gpu.get("available") else 0.0)


def exposition(snapshot: KpiSnapshot) -> bytes:
    """The snapshot in the Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KpiCollector(snapshot))
    return generate_latest(registry)


class CachedExposition:
    """The exposition of a fresh snapshot at most every ``ttl_s``: a scrape costs a read of the
    cache, not of the ledger, MLflow and Prefect. One computation at a time."""

    def __init__(self, snapshot: Callable[[], KpiSnapshot], ttl_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot, self.ttl_s, self.clock = snapshot, ttl_s, clock
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._made = -float("inf")

    def __call__(self) -> bytes:
        with self._lock:
            if self._body is None or self.clock() - self._made >= self.ttl_s:
                self._body = exposition(self._snapshot())
                self._made = self.clock()
            return self._body
