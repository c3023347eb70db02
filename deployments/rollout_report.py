"""A rollout as a picture: traffic share of the new version over time, with every gate verdict.

The markdown timeline says what happened; the chart shows it at a glance (how long each step
baked, where a gate failed, how fast traffic came back). It is logged to MLflow next to the
version and linked from the Prefect artifact.
"""

from __future__ import annotations

from pathlib import Path


def rollout_chart(timeline: list[dict], model: str, version: str, previous: str | None, outcome: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set_title(f"{model}: v{previous or '-'} → v{version} — {outcome}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def log_rollout_chart(settings, model: str, version: str, chart: Path) -> str | None:
    """Log the chart on the version's MLflow run; the URL the Prefect artifact embeds it from."""
    from tasks.registry import tracking_client

    client = tracking_client(settings)
    run_id = client.get_model_version(model, version).run_id
    if not run_id:
        return None
    client.log_artifact(run_id, str(chart), "rollouts")
    return f"{settings.mlflow_url}/get-artifact?path=rollouts/{chart.name}&run_uuid={run_id}"
