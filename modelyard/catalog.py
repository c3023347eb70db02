"""The catalog of names: every ledger action, Prefect event, registry alias and header, once.

Flows, tasks, the serving side, automations, KPIs and `prefect.yaml` all speak these names;
a test checks that `prefect.yaml` matches them. A name is never derived from another by
string surgery: the alert → ledger-action mapping is written out below.
"""

from __future__ import annotations

import re
from enum import StrEnum

# --- registry aliases ------------------------------------------------------------------------
CHAMPION = "champion"
CHALLENGER = "challenger"


class Action(StrEnum):
    """What a ledger record says happened."""

    STACK_SMOKE = "stack.smoke"
    DATA_VALIDATED = "data.validated"
    DATA_REJECTED = "data.rejected"
    MODEL_REGISTERED = "model.registered"
    MODEL_EVALUATED = "model.evaluated"
    MODEL_PROMOTED = "model.promoted"
    IMAGE_BUILT = "docker.image.built"
    DEPLOY_STARTED = "deploy.started"
    DEPLOY_SUCCEEDED = "deploy.succeeded"
    DEPLOY_ROLLED_BACK = "deploy.rolled_back"  # a rollout's own gate failed; traffic went back by itself
    AUTOMATIC_ROLLBACK = "deploy.automatic_rollback"  # an alert on a serving version put the previous back
    AUTOMATIC_ROLLBACK_FAILED = "deploy.automatic_rollback_failed"
    MANUAL_ROLLBACK = "deploy.manual_rollback"  # an operator put the previous version back
    MANUAL_ROLLBACK_FAILED = "deploy.manual_rollback_failed"
    REGISTRY_WEBHOOK_REJECTED = "registry.webhook.rejected"  # one signed, fresh delivery refused (a bad name)
    # Refused posts the bridge could not attribute to MLflow (bad signature, stale, malformed,
    # duplicate): counted by reason, one summary record per interval, never one record per post.
    WEBHOOK_REJECTED = "registry.webhook.rejections"
    NAME_REFUSED = "name.refused"  # a model name or version from an event failed modelyard.names: the flow refused it
    LEDGER_REPAIRED = "ledger.repaired"  # `audit repair` (or the next append) quarantined a torn last line
    MODEL_SIGNATURE_REFUSED = "model.signature_refused"  # a version's signature missing or invalid: never loaded
    REGISTRY_EVENT_EMITTED = "registry.event.emitted"
    REGISTRY_EVENT_RECONCILED = "registry.event.reconciled"
    MONITOR_DRIFT = "monitor.drift.detected"
    MONITOR_PERFORMANCE = "monitor.performance.degraded"
    MONITOR_SERVICE = "monitor.service.degraded"
    MONITOR_INVALID_DATA = "monitor.data.invalid"
    RETRAIN_SKIPPED = "retrain.skipped"
    RETRAIN_STARTED = "retrain.started"
    RETRAIN_FINISHED = "retrain.finished"
    KPI_RECOVERED = "kpi.recovered"
    KPI_CLOSED_LOOP = "kpi.closed_loop"
    SERVING_REPLICA_DOWN = "serving.replica_down"  # the watchdog took a dead or hung replica out of the route
    SERVING_REPLICA_RESTORED = "serving.replica_restored"  # …and put it back once it answered again
    PREDICTION_LOG_PRUNED = "prediction_log.pruned"  # a server deleted log partitions past their retention
    SERVING_RESTORED = "serving.restored"  # a model's desired state (versions, split) serving again, with the proof
    SERVING_REPAIRED = "serving.repaired"  # replicas started or a leftover version removed while the model served
    SERVING_RESTORE_FAILED = "serving.restore_failed"  # the desired state could not be brought back; the reason
    # -- governance (environments, approvals, policy) --------------------------------------------
    # Subjects: "<registered model of the target env>/<its version>" once copied, else "<source model>/<version>".
    PROMOTION_REQUESTED = "promotion.requested"  # details: source_model, source_version, environment, requested_by, automatic
    POLICY_DECIDED = "policy.decided"  # details: environment, PolicyDecision.as_record() (allowed, denials, input, digests)
    APPROVAL_REQUESTED = "approval.requested"  # details: environment, flow_run_id, url, deadline, required, evidence digest
    APPROVAL_GIVEN = "approval.given"  # details: environment, identity, decision=approve, comment, flow_run_id
    APPROVAL_REJECTED = "approval.rejected"  # a person said no: identity, comment
    APPROVAL_REFUSED = "approval.refused"  # an input that did not count: unknown identity, bad code, four-eyes
    APPROVAL_TIMED_OUT = "approval.timed_out"  # no decision within approval_timeout_s: the promotion is rejected
    APPROVAL_SUPERSEDED = "approval.superseded"  # a newer version's promotion replaced a pending one
    APPROVER_ENROLLED = "approver.enrolled"  # `modelyard approvers add`: identity, team (never the secret)
    APPROVER_REMOVED = "approver.removed"
    PROMOTION_COPIED = "promotion.copied"  # the version copied into the env's registered model: target model/version
    PROMOTION_REFUSED = "promotion.refused"  # policy denied, rejected, timed out, or the copy failed: the reason
    # -- incidents (open → acknowledged → resolved) -----------------------------------------------
    INCIDENT_OPENED = "incident.opened"  # details: incident id, kind, first_signal_at, alert action, version
    INCIDENT_ACKNOWLEDGED = "incident.acknowledged"  # details: incident id, identity, note
    INCIDENT_RESOLVED = "incident.resolved"  # details: incident id, by (recovery | person), how, identity, note
    # -- audit and KPIs ---------------------------------------------------------------------------
    AUDIT_VERIFIED = "audit.verified"  # a scheduled `audit verify`: ok, records, problem
    COMPLIANCE_REPORTED = "compliance.reported"  # a compliance report written: its sha256 and where it was attached


class Event(StrEnum):
    """Prefect events modelyard emits; deployment triggers and automations match them."""

    REGISTRY_VERSION_CREATED = "modelyard.registry.model_version.created"
    REGISTRY_ALIAS_CREATED = "modelyard.registry.model_version_alias.created"
    REGISTRY_ALIAS_DELETED = "modelyard.registry.model_version_alias.deleted"
    DRIFT_DETECTED = "modelyard.drift.detected"
    PERFORMANCE_DEGRADED = "modelyard.performance.degraded"
    SERVICE_DEGRADED = "modelyard.service.degraded"
    DATA_INVALID = "modelyard.data.invalid"
    SERVING_REPLICA_DOWN = "modelyard.serving.replica_down"
    SERVING_REPLICA_RESTORED = "modelyard.serving.replica_restored"
    DEPLOY_SUCCEEDED = "modelyard.deploy.succeeded"  # a version proven serving: the next environment's promotion listens
    INCIDENT_OPENED = "modelyard.incident.opened"
    INCIDENT_RESOLVED = "modelyard.incident.resolved"


REGISTRY_EVENT_PREFIX = "modelyard.registry"


def registry_event(entity: str, action: str) -> Event:
    """The Prefect event for an MLflow webhook ``entity.action`` (raises on one we do not bridge)."""
    return Event(f"{REGISTRY_EVENT_PREFIX}.{entity}.{action}")


ALERT_EVENTS: tuple[Event, ...] = (Event.DRIFT_DETECTED, Event.PERFORMANCE_DEGRADED, Event.SERVICE_DEGRADED,
                                   Event.DATA_INVALID)
RETRAIN_EVENTS: tuple[Event, ...] = (Event.DRIFT_DETECTED, Event.PERFORMANCE_DEGRADED)
ALERT_ACTIONS: dict[Event, Action] = {
    Event.DRIFT_DETECTED: Action.MONITOR_DRIFT,
    Event.PERFORMANCE_DEGRADED: Action.MONITOR_PERFORMANCE,
    Event.SERVICE_DEGRADED: Action.MONITOR_SERVICE,
    Event.DATA_INVALID: Action.MONITOR_INVALID_DATA,
}
# Ledger actions of alerts that start a retrain: the start of a closed loop for MTTD/MTTR.
RETRAIN_ALERT_ACTIONS = frozenset(ALERT_ACTIONS[event] for event in RETRAIN_EVENTS)
ROLLBACK_ACTIONS = frozenset({Action.DEPLOY_ROLLED_BACK, Action.AUTOMATIC_ROLLBACK, Action.MANUAL_ROLLBACK})
AUTOMATIC_ROLLBACK_ACTIONS = frozenset({Action.DEPLOY_ROLLED_BACK, Action.AUTOMATIC_ROLLBACK})

# --- MLflow webhooks (what the bridge accepts, where) ------------------------------------------
WEBHOOK_PATH = "/webhooks/mlflow"
WEBHOOK_EVENTS = ("model_version.created", "model_version_alias.created", "model_version_alias.deleted")
WEBHOOK_NAME = "modelyard-registry-bridge"

# --- HTTP headers between modelyard's own parts -----------------------------------------------
# A replayed request (warm-up, model-gate comparison) stays out of a server's metrics and log.
REPLAY_HEADER = "X-Modelyard-Replay"
SHADOW_HEADER = "X-Modelyard-Shadow"
# The server's own id of every prediction (unique; returned to the client; labels join on it).
PREDICTION_ID_HEADER = "X-Modelyard-Prediction-Id"
# The router's id of a request (nginx $request_id), sent to the serving version and its shadow
# alike; a server trusts it only on its unix socket (the router's path), never over TCP.
TRACE_HEADER = "X-Modelyard-Trace"

# --- resource ids and labels on Prefect events -------------------------------------------------
def model_resource_id(model: str) -> str:
    return f"modelyard.model.{model}"


def version_resource_id(model: str, version: str) -> str:
    return f"mlflow.model.{model}.version.{version}"


def registered_model_resource_id(model: str) -> str:
    """The MLflow registered model, as registry events name it among their related resources."""
    return f"mlflow.model.{model}"


def parse_version_resource_id(resource_id: str) -> tuple[str, str] | None:
    """(model, version) of a ``version_resource_id``; None for any other id."""
    match = re.fullmatch(r"mlflow\.model\.(.+)\.version\.(\d+)", resource_id)
    return (match[1], match[2]) if match else None


# --- Prefect deployments (name/deployment) that code starts or schedules ----------------------
MONITOR_DEPLOYMENT = "monitor/monitor"
ROLLBACK_DEPLOYMENT = "rollback/rollback"
DEPLOY_DEPLOYMENT = "deploy/deploy-on-champion"
RETRAIN_DEPLOYMENT = "retrain/retrain-on-alert"
PIPELINE_DEPLOYMENT = "model-pipeline/model-pipeline"
PIPELINE_GPU_DEPLOYMENT = "model-pipeline/model-pipeline-gpu"  # the same flow on the gpu work pool
AUDIT_DEPLOYMENT = "audit-verify/audit-verify"  # the ledger verified hourly: the audit pass rate
PROMOTE_DEPLOYMENT = "promote/promote"  # a version promoted into the next environment (deploy.succeeded, `modelyard promote`)

# --- MLflow tags on model versions --------------------------------------------------------------
TAG_ARTIFACT_SHA256 = "modelyard.artifact_sha256"
TAG_DEPLOY_STATUS = "modelyard.deploy_status"
TAG_DEPLOY_DETAIL = "modelyard.deploy_detail"
TAG_SPEC_DIR = "modelyard.spec_dir"  # where a version's spec lived: a retrain resolves its relative paths from it
