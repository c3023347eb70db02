"""Rollout gates: is the new version as healthy and as sensible as the one it replaces?

Service gates read the servers' own Prometheus counters over a window (two scrapes by the
inference client, the difference between them): error rate and p99 latency of the new version,
and its p99 against the serving version's in the same window. Model gates compare answers on
the *same* inputs: the canary's logged inputs replayed against the serving version (or, for
shadow traffic, both versions' logs joined by the router's trace id) give an agreement rate and a
PSI of the prediction distributions. No comparison (an empty log, nothing joined) fails the model
gates. Everything here is a plain function of numbers, testable without servers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelyard.spec import GateSpec

if TYPE_CHECKING:  # scraped by the inference client; the gates only take the numbers
    from modelyard.resources.inference import MetricsSnapshot


def histogram_quantile(q: float, cumulative: dict[float, int]) -> float | None:
    """Prometheus' estimate: find the bucket holding the q-quantile, interpolate linearly.
    ``None`` with no observations; the last finite bound when it falls in +Inf."""
    bounds = sorted(cumulative)
    total = cumulative.get(math.inf, cumulative[bounds[-1]] if bounds else 0)
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


# A tail quantile estimated from n requests is only as good as the requests above it: with 40
# requests "p99" is the single slowest one (a cold cache, a GC pause), and comparing two of those
# flips a rollout by chance. Latency is compared at the highest quantile with at least this many
# requests above it, p99 from 1,000 requests up.
TAIL_REQUESTS = 10


def supported_quantile(requests: int, highest: float = 0.99) -> float:
    """The quantile a window of ``requests`` can estimate: ``1 - TAIL_REQUESTS / requests``,
    at most ``highest``, at least the median."""
    if requests <= 0:
        return 0.5
    return max(0.5, min(highest, 1 - TAIL_REQUESTS / requests))


@dataclass(frozen=True)
class ServiceWindow:
    requests: int
    server_errors: int
    p99_ms: float | None
    latency_buckets: dict[float, int] | None = None  # cumulative, as scraped: other quantiles

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    def quantile_ms(self, q: float) -> float | None:
        if self.latency_buckets is None:  # a window given by its p99 alone
            return self.p99_ms
        value = histogram_quantile(q, self.latency_buckets)
        return None if value is None else value * 1000


def service_window(before: MetricsSnapshot, after: MetricsSnapshot) -> ServiceWindow:
    """What a server did between two scrapes."""
    delta = {s: after.by_status.get(s, 0) - before.by_status.get(s, 0) for s in after.by_status}
    buckets = {b: after.latency_buckets.get(b, 0) - before.latency_buckets.get(b, 0) for b in after.latency_buckets}
    p99 = histogram_quantile(0.99, buckets)
    return ServiceWindow(sum(delta.values()), sum(n for s, n in delta.items() if s >= 500),
                         None if p99 is None else p99 * 1000, buckets)


def psi(expected: np.ndarray, actual: np.ndarray, categorical: bool, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (0: same distribution;
    above 0.25 is conventionally a major shift)."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if len(expected) == 0 or len(actual) == 0:
        return 0.0
    if categorical:
        labels = np.union1d(np.unique(expected.astype(str)), np.unique(actual.astype(str)))
        e = np.array([(expected.astype(str) == label).mean() for label in labels])
        a = np.array([(actual.astype(str) == label).mean() for label in labels])
    else:
        edges = np.unique(np.quantile(expected.astype(float), np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:  # a constant reference: below it, exactly it, above it
            edges = np.array([-np.inf, edges[0], np.nextafter(edges[0], np.inf), np.inf])
        edges[0], edges[-1] = -np.inf, np.inf
        e = np.histogram(expected.astype(float), edges)[0] / len(expected)
        a = np.histogram(actual.astype(float), edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def agreement(reference: np.ndarray, candidate: np.ndarray, categorical: bool, tolerance: float) -> float:
    """Share of rows answered alike: the same class, or within ``tolerance`` relative difference."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if len(reference) == 0:
        return 1.0
    if categorical:
        return float((reference.astype(str) == candidate.astype(str)).mean())
    r, c = reference.astype(float), candidate.astype(float)
    return float((np.abs(c - r) <= tolerance * np.maximum(np.abs(r), 1e-9)).mean())


@dataclass(frozen=True)
class ModelWindow:
    rows: int
    agreement: float
    psi: float


def shadow_pairs(served: pd.DataFrame, shadowed: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The serving and the shadow version's predictions of the same mirrored rows, paired by the
    router's trace id (one per request, the same on its mirror) and the row. Rows without a trace
    id, and keys either log holds more than once, pair with nothing: a pairing must be certain.
    Logs without trace ids pair nothing (the model gates then fail)."""
    keys = ["trace_id", "row"]
    sides = []
    for log in (served, shadowed):
        if log.empty or "trace_id" not in log.columns:
            return np.array([]), np.array([])
        log = log[log["trace_id"].notna() & (log["trace_id"].astype(str) != "")]
        sides.append(log.loc[~log.duplicated(keys, keep=False), keys + ["prediction"]])
    joined = sides[0].merge(sides[1], on=keys, suffixes=("_served", "_shadow"))
    return joined["prediction_served"].to_numpy(), joined["prediction_shadow"].to_numpy()


def compare_predictions(reference: np.ndarray, candidate: np.ndarray, categorical: bool, tolerance: float) -> ModelWindow:
    return ModelWindow(len(candidate), agreement(reference, candidate, categorical, tolerance),
                       psi(reference, candidate, categorical))


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float | None
    threshold: float | None
    ok: bool
    note: str = ""

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        limit = f" (limit {self.threshold:.4g})" if self.threshold is not None else ""
        note = f" [{self.note}]" if self.note else ""
        return f"{self.gate} {value}{limit}{note} {'ok' if self.ok else 'FAILED'}"


def judge(gates: GateSpec, new: ServiceWindow, serving: ServiceWindow | None, model: ModelWindow | None) -> list[GateResult]:
    """Every gate's verdict on one window; a rollout proceeds only if all are ok."""
    results = [
        GateResult("requests", new.requests, gates.min_requests, new.requests >= gates.min_requests),
        GateResult("error_rate", new.error_rate, gates.max_error_rate, new.error_rate <= gates.max_error_rate),
    ]
    if gates.max_p99_ms is not None:
        results.append(GateResult("p99_ms", new.p99_ms, gates.max_p99_ms,
                                  new.p99_ms is not None and new.p99_ms <= gates.max_p99_ms))
    if serving is not None and serving.requests and new.requests:
        q = supported_quantile(min(new.requests, serving.requests))
        new_ms, serving_ms = new.quantile_ms(q), serving.quantile_ms(q)
        if new_ms is not None and serving_ms:
            # Latencies under a millisecond are dominated by noise; compare from 1 ms up.
            ratio = max(new_ms, 1.0) / max(serving_ms, 1.0)
            note = "" if q == 0.99 else f"at p{q * 100:.0f}: {min(new.requests, serving.requests)} requests"
            results.append(GateResult("p99_ratio", ratio, gates.max_p99_ratio, ratio <= gates.max_p99_ratio, note))
    rows = 0 if model is None else model.rows
    results.append(GateResult("compared_rows", rows, gates.min_requests, rows >= gates.min_requests,
                              "" if model is not None else "no logged predictions to compare"))
    if model is not None:
        results.append(GateResult("agreement", model.agreement, gates.min_agreement, model.agreement >= gates.min_agreement))
        results.append(GateResult("prediction_psi", model.psi, gates.max_prediction_psi, model.psi <= gates.max_prediction_psi))
    return results


def failures(results: list[GateResult]) -> str:
    return "; ".join(r.describe() for r in results if not r.ok)


def results_dicts(results: list[GateResult]) -> list[dict]:
    return [asdict(r) for r in results]
