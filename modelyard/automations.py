"""Automations that `stack up` creates beside the deployment triggers of prefect.yaml.

The triggers in prefect.yaml turn alerts into work (a retrain, an automatic rollback); what they
cannot express is "tell a human": every alert also becomes a Prefect webhook notification
(CustomWebhookNotificationBlock) POSTed to ``MODELYARD_NOTIFY_URL``.
"""

from __future__ import annotations

from datetime import timedelta

from modelyard.catalog import ALERT_EVENTS, model_resource_id
from modelyard.settings import Settings

NOTIFY_AUTOMATION = "modelyard: notify on every alert"
NOTIFY_BLOCK = "modelyard-alerts"


def notification_automation(block_document_id):
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=NOTIFY_AUTOMATION,
        description="Every monitoring alert, with its numbers, to the configured webhook.",
        trigger=EventTrigger(match={"prefect.resource.id": model_resource_id("*")}, expect={str(e) for e in ALERT_EVENTS},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="modelyard {{ event.event }}: {{ event.resource['modelyard.model'] }} "
                    "v{{ event.resource['modelyard.version'] }}",
            body="{{ event.payload.reason }} | event {{ event.id }} | payload {{ event.payload }}",
        )],
    )


def ensure_notifications(settings: Settings) -> str:
    """Create (or re-create) the notification block and automation; "disabled" without a URL."""
    from prefect import get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import temporary_settings

    with temporary_settings(settings.prefect_client_settings()):
        with get_client(sync_client=True) as client:
            existing = client.read_automations_by_name(NOTIFY_AUTOMATION)
            if not settings.notify_url:
                for automation in existing:
                    client.delete_automation(automation.id)
                return "disabled"
            block = CustomWebhookNotificationBlock(
                name="modelyard", url=settings.notify_url, method="POST", allow_private_urls=True,
                json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "modelyard"})
            block_id = block.save(NOTIFY_BLOCK, overwrite=True)
            wanted = notification_automation(block_id)
            for automation in existing:
                if automation.trigger == wanted.trigger and automation.actions == wanted.actions:
                    return "unchanged"
                client.delete_automation(automation.id)
            client.create_automation(wanted)
            return "created"
