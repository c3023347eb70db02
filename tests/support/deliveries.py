"""MLflow webhook deliveries as MLflow's own delivery code signs them, for the bridge's tests."""

from __future__ import annotations

import json
import time
import uuid

from mlflow.webhooks.delivery import _generate_hmac_signature


def signed_delivery(secret: str, age_s: int = 0, delivery_id: str | None = None, data: dict | None = None,
                    entity: str = "model_version_alias", action: str = "created") -> tuple[dict[str, str], bytes]:
    """Headers and body of one delivery, signed with ``secret``, stamped ``age_s`` seconds ago."""
    payload = json.dumps({"entity": entity, "action": action, "timestamp": "now",
                          "data": data or {"name": "fraud", "alias": "champion", "version": "3"}})
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) - age_s)
    headers = {"x-mlflow-signature": _generate_hmac_signature(secret, delivery_id, timestamp, payload),
               "x-mlflow-delivery-id": delivery_id, "x-mlflow-timestamp": timestamp,
               "content-type": "application/json"}
    return headers, payload.encode()
