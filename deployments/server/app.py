"""The inference server as a bare ASGI application.

No web framework sits between the socket and the model: routing is a dict lookup, JSON is
orjson, and the model runs in micro-batches — so the cost per request stays close to a bare
ASGI endpoint. It speaks the MLflow scoring protocol and the Open Inference Protocol v2.
"""

from __future__ import annotations

import hmac
import time
import os
from dataclasses import dataclass

import numpy as np
import orjson

from deployments.server.batching import MicroBatcher
from deployments.server.contract import ContractError, InputContract, MatrixBatch, bad, parse_json
from deployments.server.metrics import ServerMetrics
from deployments.server.model_runtime import ModelRuntime, Prediction
from deployments.server.prediction_log import MatrixColumns
from modelyard.catalog import REPLAY_HEADER

JSON = b"application/json"


def jsonable(values: np.ndarray):
    """Numeric arrays go to orjson as they are (fast); others as Python lists."""
    return values if values.dtype.kind in "iufb" else values.tolist()


# A rollout replays a canary's logged inputs against the serving version to compare answers;
# those requests are not traffic, so they stay out of the prediction log and latency metrics.
REPLAY = REPLAY_HEADER.lower().encode()  # ASGI header names come lowercased, as bytes


@dataclass(frozen=True)
class ServerConfig:
    api_token: str | None
    max_batch: int = 64
    max_wait_ms: float = 0.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 10_000


class InferenceApp:
    """ASGI app serving one model version."""

    def __init__(self, runtime: ModelRuntime, config: ServerConfig, prediction_log=None) -> None:
        self.runtime, self.config, self.log = runtime, config, prediction_log
        info = runtime.info
        self.metrics = ServerMetrics(info.model, info.version)
        self.contract = InputContract(runtime.columns, config.max_rows)
        self.ready = False
        self.batcher = MicroBatcher(
            runtime.predict, [c.name for c in runtime.columns], config.max_batch, config.max_wait_ms,
            run_inline=info.serving_format == "onnx", on_batch=self.metrics.batch,
        )
        self._token = config.api_token.encode() if config.api_token else None
        self._exact = {
            ("GET", "/ping"): (self.health, False), ("GET", "/health"): (self.health, False),
            ("GET", "/v2/health/live"): (self.live, False), ("GET", "/v2/health/ready"): (self.readiness, False),
            ("GET", "/v2"): (self.server_metadata, True),
            ("POST", "/invocations"): (self.invocations, True),
            ("GET", "/metrics"): (self.metrics_route, True), ("GET", "/version"): (self.version, True),
        }
        name = info.model
        base = f"/v2/models/{name}"
        for prefix in (base, f"{base}/versions/{info.version}"):
            self._exact[("GET", prefix)] = (self.model_metadata, True)
            self._exact[("GET", f"{prefix}/ready")] = (self.model_ready, False)
            self._exact[("POST", f"{prefix}/infer")] = (self.v2_infer, True)

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.batcher.start()
                if self.log is not None:
                    self.log.start()
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self.batcher.stop()
                if self.log is not None:
                    self.log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or os.urandom(16).hex()
        path = scope["path"]
        route = self._exact.get((scope["method"], path))
        route_name = "unknown"
        try:
            if route is None:
                if any(p == path for _, p in self._exact):
                    raise ContractError(405, "METHOD_NOT_ALLOWED", f"{scope['method']} is not allowed on {path}")
                if path.startswith("/v2/models/"):
                    raise ContractError(404, "MODEL_NOT_FOUND", f"this server serves model '{self.runtime.info.model}' "
                                        f"version {self.runtime.info.version}", "model")
                raise ContractError(404, "NOT_FOUND", f"no route {path}")
            handler, needs_auth = route
            route_name = handler.__name__
            if needs_auth and self._token is not None:
                self._authorize(headers)
            body = await self._read_body(headers, receive) if scope["method"] == "POST" else b""
            status, payload, content_type = await handler(headers, body, request_id)
        except ContractError as error:
            self.metrics.error(error.code.lower())
            status, payload, content_type = error.status, error.body(), JSON
        except Exception as error:  # a server fault, never the client's input
            self.metrics.error("internal")
            status = 500
            payload = orjson.dumps({"error_code": "INTERNAL_ERROR", "message": f"{type(error).__name__}: {error}"[:500]})
            content_type = JSON
        response_headers = [(b"content-type", content_type), (b"x-request-id", request_id.encode("latin-1"))]
        if status == 401:
            response_headers.append((b"www-authenticate", b'Bearer realm="modelyard"'))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        if REPLAY in headers and route_name in ("invocations", "v2_infer"):
            route_name = "replay"  # a rollout's comparison, not traffic: kept out of latency and the log
        self.metrics.request(route_name, status, time.perf_counter() - started)

    def _authorize(self, headers: dict) -> None:
        value = headers.get(b"authorization", b"")
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._token):
            raise ContractError(401, "UNAUTHENTICATED", "a valid bearer token is required", "Authorization")

    async def _read_body(self, headers: dict, receive) -> bytes:
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ContractError(413, "PAYLOAD_TOO_LARGE", f"body of {int(declared)} bytes exceeds {limit}", "body")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ContractError(400, "DISCONNECTED", "the client went away", "body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ContractError(413, "PAYLOAD_TOO_LARGE", f"body exceeds {limit} bytes", "body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    # -- routes ------------------------------------------------------------------------------

    async def health(self, headers, body, request_id):
        return (200 if self.ready else 503), b'{"status":"ok"}' if self.ready else b'{"status":"loading"}', JSON

    async def live(self, headers, body, request_id):
        return 200, b'{"live":true}', JSON

    async def readiness(self, headers, body, request_id):
        return (200 if self.ready else 503), orjson.dumps({"ready": self.ready}), JSON

    async def model_ready(self, headers, body, request_id):
        return (200 if self.ready else 503), orjson.dumps({"name": self.runtime.info.model, "ready": self.ready}), JSON

    async def server_metadata(self, headers, body, request_id):
        return 200, orjson.dumps({"name": "modelyard", "version": "0.1.0", "extensions": []}), JSON

    async def model_metadata(self, headers, body, request_id):
        info = self.runtime.info
        inputs = [{"name": c.name, "datatype": c.v2_datatype, "shape": [-1]} for c in self.runtime.columns]
        outputs = [{"name": "label" if self.runtime.is_classifier else "prediction",
                    "datatype": "BYTES" if self._string_labels() else ("INT64" if self.runtime.is_classifier else "FP64"),
                    "shape": [-1]}]
        if self.runtime.is_classifier:
            outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.runtime.classes or [])]})
        platform = "onnxruntime_onnx" if info.serving_format == "onnx" else "mlflow_pyfunc"
        return 200, orjson.dumps({"name": info.model, "versions": [info.version], "platform": platform,
                                  "inputs": inputs, "outputs": outputs}), JSON

    def _string_labels(self) -> bool:
        return bool(self.runtime.classes) and isinstance(self.runtime.classes[0], str)

    async def version(self, headers, body, request_id):
        return 200, orjson.dumps(self.runtime.info.__dict__), JSON

    async def metrics_route(self, headers, body, request_id):
        stats = self.log.stats() if self.log is not None else None
        return 200, self.metrics.render(stats), b"text/plain; version=0.0.4"

    async def invocations(self, headers, body, request_id):
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == b"application/json":
            columns = self.contract.from_mlflow_json(parse_json(body))
        elif content_type == b"text/csv":
            columns = self.contract.from_csv(body)
        else:
            raise ContractError(415, "UNSUPPORTED_MEDIA_TYPE",
                                f"content type '{content_type.decode('latin-1') or 'none'}' is not supported; "
                                "use application/json or text/csv", "Content-Type")
        prediction = await self._predict(columns, request_id, log=REPLAY not in headers)
        return 200, orjson.dumps({"predictions": jsonable(prediction.labels)}, option=orjson.OPT_SERIALIZE_NUMPY), JSON

    async def v2_infer(self, headers, body, request_id):
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if content_type not in (b"application/json", b""):
            raise ContractError(415, "UNSUPPORTED_MEDIA_TYPE", "the v2 protocol takes application/json here", "Content-Type")
        if b"inference-header-content-length" in headers:
            raise ContractError(415, "UNSUPPORTED_MEDIA_TYPE", "binary tensor data is not supported; send JSON data",
                                "Inference-Header-Content-Length")
        payload = parse_json(body)
        columns = self.contract.from_v2(payload)
        prediction = await self._predict(columns, request_id, log=REPLAY not in headers)
        rows = len(prediction.labels)
        info = self.runtime.info
        if self.runtime.is_classifier:
            outputs = [{"name": "label", "datatype": "BYTES" if self._string_labels() else "INT64",
                        "shape": [rows], "data": jsonable(prediction.labels)}]
            if prediction.probabilities is not None:
                proba = np.asarray(prediction.probabilities, dtype=np.float32)
                outputs.append({"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape),
                                "data": proba.reshape(-1)})
        else:
            outputs = [{"name": "prediction", "datatype": "FP64", "shape": [rows],
                        "data": np.asarray(prediction.labels, dtype=np.float64)}]
        wanted = {o.get("name") for o in payload.get("outputs", []) if isinstance(o, dict)}
        if wanted:
            unknown = wanted - {o["name"] for o in outputs}
            if unknown:
                raise bad(f"unknown output {sorted(unknown)[0]!r}", "outputs")
            outputs = [o for o in outputs if o["name"] in wanted]
        response = {"model_name": info.model, "model_version": info.version, "outputs": outputs}
        if isinstance(payload.get("id"), str):
            response["id"] = payload["id"]
        return 200, orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), JSON

    async def _predict(self, columns: dict[str, np.ndarray], request_id: str, log: bool = True) -> Prediction:
        received = time.time()
        prediction = await self.batcher.submit(columns)
        if self.log is not None and log:
            logged = MatrixColumns(columns.names, columns.matrix) if isinstance(columns, MatrixBatch) else columns
            self.log.submit(request_id, received, logged, prediction.labels, prediction.probabilities)
        return prediction
