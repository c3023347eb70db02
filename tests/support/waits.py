"""Waiting on a condition with a deadline, and reading what Prefect's automations did about an
event. A negative check ("this started nothing") waits for a later, positively observed marker
— an automation acting on the event, or on one emitted after it — never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from modelyard.settings import Settings

T = TypeVar("T")

ACTION_EXECUTED = "prefect.automation.action.executed"
ACTION_FAILED = "prefect.automation.action.failed"
RUN_DEPLOYMENT = "run-deployment"
SEND_NOTIFICATION = "send-notification"


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.5) -> T:
    """The first truthy value of ``condition()``; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s:.0f} s")
        time.sleep(poll_s)


def prefect_events(settings: Settings, **event_filter) -> list[dict]:
    """Events Prefect has stored that match ``event_filter`` (its /events/filter body), newest first."""
    response = httpx.post(f"{settings.prefect_api_url}/events/filter", timeout=10, auth=settings.prefect_basic_auth(),
                          json={"filter": event_filter, "limit": 50})
    response.raise_for_status()
    return response.json()["events"]


def actions_on(settings: Settings, event_id: str, action_type: str | None = None) -> list[dict]:
    """What automations did about one event (executed or failed actions), optionally of one type."""
    actions = prefect_events(settings, event={"name": [ACTION_EXECUTED, ACTION_FAILED]},
                             related={"id": [f"prefect.event.{event_id}"]})
    return [a for a in actions if action_type is None or a["payload"].get("action_type") == action_type]


def related_ids(event: dict, kind: str) -> list[str]:
    """The ids of an event's related resources of one kind (``prefect.flow-run`` → run ids)."""
    prefix = f"{kind}."
    return [r["prefect.resource.id"].removeprefix(prefix) for r in event.get("related", [])
            if r["prefect.resource.id"].startswith(prefix)]
