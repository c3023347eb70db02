"""Automations that `stack up` creates beside the deployment triggers of prefect.yaml.

The triggers in prefect.yaml turn alerts into work (a retrain, an automatic rollback); what they
cannot express is "tell a human". Prefect's own notification blocks do that: for each channel
configured in the settings (a generic webhook, Slack, Microsoft Teams) one block, and two
automations sending through it: every monitoring alert, and every incident opened or resolved
(``modelyard.incidents``). A channel whose URL is unset has neither block nor automations.
The URLs are secrets: they live in Prefect's block documents, never in a message or a log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from modelyard.catalog import ALERT_EVENTS, Event, model_resource_id
from modelyard.settings import Settings

INCIDENT_EVENTS: tuple[Event, ...] = (Event.INCIDENT_OPENED, Event.INCIDENT_RESOLVED)


@dataclass(frozen=True)
class Channel:
    """One place notifications go: the setting holding its URL, its Prefect block type and name."""

    name: str
    setting: str
    block_name: str

    @property
    def alert_automation(self) -> str:
        return f"modelyard: notify {self.name} on every alert"

    @property
    def incident_automation(self) -> str:
        return f"modelyard: notify {self.name} on every incident"


CHANNELS: tuple[Channel, ...] = (
    Channel("webhook", "notify_url", "modelyard-alerts"),
    Channel("slack", "notify_slack_url", "modelyard-slack"),
    Channel("teams", "notify_teams_url", "modelyard-teams"),
)
NOTIFY_AUTOMATION = CHANNELS[0].alert_automation
NOTIFY_BLOCK = CHANNELS[0].block_name
LEGACY_AUTOMATIONS = ("modelyard: notify on every alert",)  # the name before there were channels


def notification_automation(block_document_id, channel: str = "webhook"):
    """Every monitoring alert, with its numbers, sent through the block ``block_document_id``."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=_channel(channel).alert_automation,
        description=f"Every monitoring alert, with its numbers, to the {channel} channel.",
        trigger=EventTrigger(match={"prefect.resource.id": model_resource_id("*")},
                             expect={str(e) for e in ALERT_EVENTS},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="modelyard {{ event.event }}: {{ event.resource['modelyard.model'] }} "
                    "v{{ event.resource['modelyard.version'] }}",
            body="{{ event.payload.reason }} | event {{ event.id }} | payload {{ event.payload }}",
        )],
    )


def incident_automation(block_document_id, channel: str = "webhook"):
    """Every incident opened or resolved, with its id, kind, model, version and times."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=_channel(channel).incident_automation,
        description=f"Every incident opened or resolved (modelyard incidents) to the {channel} channel.",
        trigger=EventTrigger(match={"prefect.resource.id": model_resource_id("*")},
                             expect={str(e) for e in INCIDENT_EVENTS},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(
            block_document_id=block_document_id,
            subject="modelyard incident {{ event.resource['modelyard.incident'] }} "
                    "{{ 'resolved' if event.event.endswith('resolved') else 'opened' }}: "
                    "{{ event.resource['modelyard.model'] }} v{{ event.resource['modelyard.version'] }} "
                    "({{ event.resource['modelyard.kind'] }})",
            body="{{ event.resource['modelyard.kind'] }} incident {{ event.resource['modelyard.incident'] }} on "
                 "{{ event.resource['modelyard.model'] }} v{{ event.resource['modelyard.version'] }}: "
                 "{{ event.payload.summary }} | first signal {{ event.payload.first_signal_at }}, opened "
                 "{{ event.payload.opened_at }}"
                 "{% if event.payload.resolved_at %} | resolved {{ event.payload.resolved_at }} by "
                 "{{ event.payload.resolved_by }}: {{ event.payload.resolution }} (MTTR {{ event.payload.mttr_s }} s)"
                 "{% endif %} | `modelyard incidents`",
        )],
    )


def _channel(name: str) -> Channel:
    for channel in CHANNELS:
        if channel.name == name:
            return channel
    raise ValueError(f"channel: {name!r} is not a notification channel ({', '.join(c.name for c in CHANNELS)})")


def notification_block(channel: Channel, url: str) -> Any:
    """The Prefect notification block of ``channel`` posting to ``url``; a URL the block refuses
    is a ValueError naming the setting, never showing the URL."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook

    try:
        if channel.name == "slack":
            return SlackWebhook(url=url)
        if channel.name == "teams":
            return MicrosoftTeamsWebhook(url=url)
        return CustomWebhookNotificationBlock(
            name="modelyard", url=url, method="POST", allow_private_urls=True,
            json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "modelyard"})
    except Exception:  # noqa: BLE001 - re-raised without the URL (a secret) or its chained errors
        pass
    raise ValueError(f"{channel.setting}: not a valid {channel.name} webhook URL for Prefect's notification block")


def _sync(client, names: list[str], wanted: list) -> str:
    """The automations called ``names`` made equal to ``wanted`` (none: all deleted)."""
    existing = [a for name in names for a in client.read_automations_by_name(name)]
    kept, outcome = set(), "unchanged"
    for want in wanted:
        same = next((a for a in existing if a.id not in kept and a.name == want.name and a.trigger == want.trigger
                     and a.actions == want.actions), None)
        if same is not None:
            kept.add(same.id)
            continue
        client.create_automation(want)
        outcome = "created"
    for automation in existing:
        if automation.id not in kept:
            client.delete_automation(automation.id)
            outcome = outcome if wanted else "disabled"
    return outcome


def _forget_block(client, channel: Channel, block_type_slug: str) -> None:
    """No block (and so no copy of an old URL) kept for a channel that was switched off."""
    from prefect.exceptions import ObjectNotFound

    try:
        document = client.read_block_document_by_name(channel.block_name, block_type_slug)
    except ObjectNotFound:
        return
    client.delete_block_document(document.id)


def ensure_notifications(settings: Settings) -> str:
    """Create, update or remove each channel's block and automations to match the settings; what
    changed, e.g. "webhook created" ("unchanged" when nothing did, "disabled" when no channel is set)."""
    from prefect import get_client
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook
    from prefect.settings import temporary_settings

    slugs = {"webhook": CustomWebhookNotificationBlock.get_block_type_slug(),
             "slack": SlackWebhook.get_block_type_slug(), "teams": MicrosoftTeamsWebhook.get_block_type_slug()}
    changes = []
    with temporary_settings(settings.prefect_client_settings()):
        with get_client(sync_client=True) as client:
            for channel in CHANNELS:
                secret = getattr(settings, channel.setting)
                names = [channel.alert_automation, channel.incident_automation]
                if channel is CHANNELS[0]:
                    names += LEGACY_AUTOMATIONS
                if secret is None or not secret.get_secret_value():
                    outcome = _sync(client, names, [])
                    _forget_block(client, channel, slugs[channel.name])
                else:
                    block_id = notification_block(channel, secret.get_secret_value()).save(channel.block_name,
                                                                                           overwrite=True)
                    outcome = _sync(client, names, [notification_automation(block_id, channel.name),
                                                    incident_automation(block_id, channel.name)])
                if outcome != "unchanged":
                    changes.append(f"{channel.name} {outcome}")
    if changes:
        return ", ".join(changes)
    configured = [c for c in CHANNELS if getattr(settings, c.setting) is not None]
    return "unchanged" if configured else "disabled"
