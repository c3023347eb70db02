"""The model card: what a model is for, what it was trained on, how well it does, where it fails."""

from __future__ import annotations

from typing import Any

from modelyard.spec import ModelSpec


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row) + " |" for row in rows]
    return "\n".join(out)


def model_card_markdown(
    spec: ModelSpec,
    *,
    data_facts: dict[str, Any],
    metrics: dict[str, float],
    slice_rows: list[dict],
    lineage: dict[str, str],
    serving: dict[str, Any],
) -> str:
    """A markdown model card for the Prefect UI and MLflow."""
    primary = spec.metrics.primary
    limitations = spec.card.limitations or ["Not evaluated outside the distribution of its training data."]
    sections = [
        f"# Model card: {spec.name}",
        "",
        "## Intended use",
        spec.card.intended_use or f"{spec.task.replace('_', ' ')} of `{spec.data.target}`.",
        f"Owner: {spec.card.owner or 'unassigned'}",
        "",
        "## Data",
        _table(["fact", "value"], [[k, v] for k, v in data_facts.items()]),
        "",
        "## Metrics on the holdout",
        _table(["metric", "value"], [[k, v] for k, v in sorted(metrics.items())]),
        "",
        f"## {primary} by slice",
        _table(["slice", "value", "rows", primary], [[r["slice"], r["value"], r["rows"], r.get(primary)] for r in slice_rows])
        if slice_rows else "No slices configured.",
        "",
        "## Serving",
        f"Format: **{serving['format']}** — {serving['onnx_status']}",
        "",
        "## Limitations",
        "\n".join(f"- {item}" for item in limitations),
        "",
        "## Lineage",
        _table(["tag", "value"], [[k, v] for k, v in sorted(lineage.items())]),
    ]
    return "\n".join(sections) + "\n"
