"""Per-model monitor schedules on the one `monitor` deployment.

Each deployed model gets a schedule (slug ``monitor-<model>``) that runs `monitor` with the
model as its parameter, every ``monitoring.interval_s`` of its spec. The deploy flow ensures it
when a version starts serving; the reconciler ensures it again every minute, so a schedule lost
to a re-registration of the deployments comes back.
"""

from __future__ import annotations

from datetime import timedelta

from modelyard.catalog import MONITOR_DEPLOYMENT


def schedule_slug(model: str) -> str:
    return f"monitor-{model}"


def ensure_monitor_schedule(model: str, interval_s: int) -> str:
    """Create or update the model's schedule; returns "created", "updated" or "unchanged".

    The deploy flow and the reconciler may both find the schedule missing at the same moment;
    the one whose create loses (409: the slug exists) reads it again and goes on from there."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError

    from datetime import UTC, datetime

    # The first run comes one interval after deployment: right away there is nothing to judge.
    schedule = IntervalSchedule(interval=timedelta(seconds=interval_s),
                                anchor_date=datetime.now(UTC) + timedelta(seconds=interval_s))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(MONITOR_DEPLOYMENT)
        for attempt in range(2):
            existing = {s.slug: s for s in client.read_deployment_schedules(deployment.id)}
            current = existing.get(schedule_slug(model))
            if current is not None:
                break
            try:
                client.create_deployment_schedules(deployment.id, [DeploymentScheduleCreate(
                    schedule=schedule, active=True, parameters={"model": model}, slug=schedule_slug(model))])
                return "created"
            except (ObjectAlreadyExists, PrefectHTTPStatusError) as error:
                conflict = isinstance(error, ObjectAlreadyExists) or error.response.status_code == 409
                if not conflict or attempt:
                    raise
        if getattr(current.schedule, "interval", None) != schedule.interval or not current.active:
            client.update_deployment_schedule(deployment.id, current.id, schedule=schedule, active=True,
                                              parameters={"model": model})
            return "updated"
        return "unchanged"


def monitored_models() -> dict[str, float]:
    """Model → interval (s) of every monitor schedule."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(MONITOR_DEPLOYMENT)
        return {s.parameters.get("model"): getattr(s.schedule, "interval", timedelta(0)).total_seconds()
                for s in client.read_deployment_schedules(deployment.id) if s.parameters.get("model")}
