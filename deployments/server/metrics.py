"""Prometheus metrics of the server, kept in plain dicts and rendered as text on scrape.

Hand-rolled rather than prometheus_client: the hot path does one dict update per request,
and the labels (model, version) are fixed per process.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.n}")
        return lines


class ServerMetrics:
    """Requests, latency, batch sizes, errors by kind and the prediction log's counters."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = f'model="{model}",version="{version}"'
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.rows_predicted = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        if route in ("invocations", "v2_infer"):
            self.latency.observe(seconds)

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)
        self.rows_predicted += rows

    def render(self, log_stats: dict[str, int] | None) -> bytes:
        lines = [
            "# HELP modelyard_requests_total Requests by route and status.",
            "# TYPE modelyard_requests_total counter",
        ]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'modelyard_requests_total{{{self.labels},route="{route}",status="{status}"}} {count}')
        lines += ["# HELP modelyard_errors_total Refused or failed requests by kind.",
                  "# TYPE modelyard_errors_total counter"]
        for kind, count in sorted(self.errors.items()):
            lines.append(f'modelyard_errors_total{{{self.labels},kind="{kind}"}} {count}')
        lines += ["# HELP modelyard_request_latency_seconds Inference request latency.",
                  "# TYPE modelyard_request_latency_seconds histogram"]
        lines += self.latency.render("modelyard_request_latency_seconds", self.labels)
        lines += ["# HELP modelyard_batch_rows Rows per micro-batch run by the model.",
                  "# TYPE modelyard_batch_rows histogram"]
        lines += self.batch_rows.render("modelyard_batch_rows", self.labels)
        lines += ["# TYPE modelyard_rows_predicted_total counter",
                  f"modelyard_rows_predicted_total{{{self.labels}}} {self.rows_predicted}"]
        for key, value in sorted((log_stats or {}).items()):
            kind = "gauge" if key.startswith("queued") else "counter"
            name = f"modelyard_prediction_log_{key}" + ("" if kind == "gauge" else "_total")
            lines += [f"# TYPE {name} {kind}", f"{name}{{{self.labels}}} {value}"]
        return ("\n".join(lines) + "\n").encode()
