"""Witnesses of the audit ledger's checkpoints outside its files, where deleting or restoring the
ledger's directory cannot reach: a tag on the MLflow registered model a checkpoint's record is
about, and a Prefect artifact per checkpoint (the artifact key keeps their history).

Both talk to the stack with short timeouts and no retries: a witness runs inside the audited
operation, which it must never hold up for long nor fail (``AuditLedger`` logs and keeps a
witness's failure; the next checkpoint, which covers this one, is the retry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from modelyard.ledger import Checkpoint, CheckpointWitness
from modelyard.names import InvalidName, check_model_name
from modelyard.settings import Settings

TAG = "modelyard.ledger_checkpoint"  # on a registered model: its JSON is the checkpoint
ARTIFACT_KEY = "ledger-checkpoint"
_JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def model_of(subject: str) -> str | None:
    """The registered model a record's subject (``model`` or ``model/version``) names, if any."""
    try:
        return check_model_name(subject.split("/", 1)[0])
    except InvalidName:
        return None


class MlflowTagWitness:
    """The newest checkpoint made after a record about a model, as a tag on that registered model;
    ``read`` gathers the tag from every registered model."""

    name = "mlflow"

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._client = None

    def _request(self, endpoint: str, method: str, **kwargs: Any):
        from mlflow.utils.rest_utils import http_request

        from modelyard.resources.registry import registry_client

        if self._client is None:
            self._client = registry_client(self.settings)
        creds = self._client._get_registry_client().store.get_host_creds()  # the client's auth, as configured
        return http_request(creds, endpoint, method, max_retries=0, timeout=self.timeout_s,
                            raise_on_status=False, **kwargs)

    def publish(self, checkpoint: Checkpoint, subject: str) -> None:
        model = model_of(subject)
        if model is None:
            return  # not about a model: the other witnesses keep it
        got = self._request("/api/2.0/mlflow/registered-models/get", "GET", params={"name": model})
        if got.status_code == 404:
            return  # a model not (or no longer) registered
        got.raise_for_status()
        tags = {t["key"]: t["value"] for t in got.json().get("registered_model", {}).get("tags", [])}
        try:
            kept = json.loads(tags[TAG])
            if kept.get("origin") == checkpoint.origin and int(kept.get("size", -1)) >= checkpoint.size:
                return  # another process already witnessed a newer one here
        except (KeyError, ValueError, TypeError, AttributeError):
            pass
        value = json.dumps(checkpoint.as_dict(), sort_keys=True)
        response = self._request("/api/2.0/mlflow/registered-models/set-tag", "POST",
                                 json={"name": model, "key": TAG, "value": value})
        response.raise_for_status()

    def read(self) -> list[tuple[str, Mapping[str, Any]]]:
        kept: list[tuple[str, Mapping[str, Any]]] = []
        token = None
        while True:
            params = {"max_results": 1000, **({"page_token": token} if token else {})}
            response = self._request("/api/2.0/mlflow/registered-models/search", "GET", params=params)
            response.raise_for_status()
            page = response.json()
            for model in page.get("registered_models", []):
                for tag in model.get("tags", []):
                    if tag["key"] == TAG:
                        try:
                            value = json.loads(tag["value"])
                        except ValueError:
                            value = {}
                        kept.append((f"MLflow model {model['name']!r} tag {TAG}", value if isinstance(value, dict) else {}))
            token = page.get("next_page_token")
            if not token:
                return kept


class PrefectArtifactWitness:
    """Every checkpoint as a markdown artifact under one key in the stack's Prefect (linked to
    the flow run that made it, if any); ``read`` gathers all of them."""

    name = "prefect"

    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    @contextmanager
    def _client(self) -> Iterator[Any]:
        from prefect import get_client
        from prefect.settings import (
            PREFECT_API_REQUEST_TIMEOUT,
            PREFECT_CLIENT_MAX_RETRIES,
            temporary_settings,
        )

        with temporary_settings({**self.settings.prefect_client_settings(), PREFECT_CLIENT_MAX_RETRIES: 0,
                                 PREFECT_API_REQUEST_TIMEOUT: self.timeout_s}):
            with get_client(sync_client=True) as client:
                yield client

    def publish(self, checkpoint: Checkpoint, subject: str) -> None:
        from prefect.client.schemas.actions import ArtifactCreate
        from prefect.runtime import flow_run

        with self._client() as client:
            client.create_artifact(ArtifactCreate(
                key=ARTIFACT_KEY, type="markdown", data=render_checkpoint(checkpoint, subject),
                description=f"audit ledger checkpoint: {checkpoint.size} records", flow_run_id=flow_run.get_id()))

    def read(self) -> list[tuple[str, Mapping[str, Any]]]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        kept: list[tuple[str, Mapping[str, Any]]] = []
        page = 200
        with self._client() as client:
            offset = 0
            while True:
                batch = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
                                              limit=page, offset=offset)
                for artifact in batch:
                    kept.append((f"Prefect artifact {ARTIFACT_KEY} {artifact.id}", parse_rendered(str(artifact.data))))
                if len(batch) < page:
                    return kept
                offset += page


def render_checkpoint(checkpoint: Checkpoint, subject: str) -> str:
    """A checkpoint as the Prefect UI shows it, with its JSON for verifiers."""
    return (f"### Audit ledger checkpoint: {checkpoint.size} records\n\n"
            "| ledger | records | tree head (root) | signed | key |\n|---|---|---|---|---|\n"
            f"| {checkpoint.origin} | {checkpoint.size} | `{checkpoint.root}` | {checkpoint.time} | `{checkpoint.key_id}` |\n\n"
            f"Signed after a record about `{subject}`. `modelyard audit verify` checks the ledger against it.\n\n"
            f"```json\n{json.dumps(checkpoint.as_dict(), sort_keys=True)}\n```\n")


def parse_rendered(markdown: str) -> dict[str, Any]:
    """The checkpoint JSON in a rendered artifact ({} when there is none)."""
    match = _JSON_BLOCK.search(markdown)
    try:
        value = json.loads(match[1]) if match else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def ledger_witnesses(settings: Settings) -> tuple[CheckpointWitness, ...]:
    """The stack's witnesses beyond the local file: MLflow tags and Prefect artifacts."""
    return (MlflowTagWitness(settings), PrefectArtifactWitness(settings))
