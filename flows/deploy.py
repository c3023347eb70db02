"""deploy: put a registered version into service with the model's rollout strategy.

Started by the registry event alone: setting the ``champion`` alias in MLflow raises a
webhook, the bridge emits ``modelyard.registry.model_version_alias.created``, and the trigger
in prefect.yaml runs this flow with the model and version from the event.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from deployments.strategies import RolloutFailed, blue_green, timeline_markdown
from modelyard.settings import get_settings
from tasks.audit import record_audit_event


@task(name="blue-green-rollout")
def blue_green_task(model: str, version: str):
    return blue_green(get_settings(), model, version)


@flow(name="deploy", log_prints=True)
def deploy(model: str, version: str, alias: str = "champion") -> dict:
    """Roll ``model`` v``version`` out (blue/green on the local target); roll back on any failed gate."""
    record_audit_event("deploy.started", f"{model}/{version}", {"alias": alias, "strategy": "blue_green", "target": "local"})
    try:
        rollout = blue_green_task(model, version)
    except RolloutFailed as failure:
        record_audit_event("deploy.rolled_back", f"{model}/{version}", {"reason": failure.reason, "timeline": failure.timeline})
        create_markdown_artifact(key=f"{model}-rollout".lower().replace("_", "-"),
                                 markdown=f"# Rollout of {model} v{version}: ROLLED BACK\n\nReason: {failure.reason}\n")
        raise
    create_markdown_artifact(key=f"{model}-rollout".lower().replace("_", "-"), markdown=timeline_markdown(rollout, "serving"))
    record_audit_event("deploy.succeeded", f"{model}/{version}", {"endpoint": rollout.endpoint_url, "timeline": rollout.timeline})
    print(f"{model} v{version} serving at {rollout.endpoint_url}")
    return {"model": model, "version": version, "endpoint": rollout.endpoint_url, "timeline": rollout.timeline}
