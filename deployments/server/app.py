"""The inference server as a bare ASGI application.

No web framework sits between the socket and the model: routing is a dict lookup, JSON is
orjson, and the model runs in micro-batches — so the cost per request stays close to a bare
ASGI endpoint. It speaks the MLflow scoring protocol and the Open Inference Protocol v2.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import orjson

from deployments.server.batching import MicroBatcher
from deployments.server.contract import (MODELS_PREFIX, ContractError, InputContract, MatrixBatch, bad, parse_json,
                                         unknown_model_route)
from deployments.server.metrics import ServerMetrics
from deployments.server.model_runtime import ModelRuntime, Prediction
from deployments.server.openapi import openapi_document
from deployments.server.prediction_log import MatrixColumns
from modelyard.catalog import PREDICTION_ID_HEADER, REPLAY_HEADER, TRACE_HEADER

JSON = b"application/json"
BODY_TIMEOUT_S = 30.0
INTERNAL_ERROR = orjson.dumps({"error_code": "INTERNAL_ERROR", "message": "internal server error"})
log = logging.getLogger("uvicorn.error")


def jsonable(values: np.ndarray):
    """Numeric arrays go to orjson as they are (fast); others as Python lists."""
    return values if values.dtype.kind in "iufb" else values.tolist()


# A rollout replays a canary's logged inputs against the serving version to compare answers;
# those requests are not traffic, so they stay out of the prediction log and latency metrics.
# Only modelyard's own callers may say so: the header's value must be the admin token.
REPLAY = REPLAY_HEADER.lower().encode()  # ASGI header names come lowercased, as bytes
# The router's id of a request, trusted only on the unix socket (the router's way in).
TRACE = TRACE_HEADER.lower().encode()
PREDICTION_ID = PREDICTION_ID_HEADER.lower().encode()


@dataclass(frozen=True)
class ServerConfig:
    api_token: str | None
    admin_token: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 0.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 10_000


def header_id(value: bytes) -> str | None:
    """An id from a header: 1 to 128 printable ASCII characters without spaces, else None."""
    if 0 < len(value) <= 128 and value.isascii():
        text = value.decode()
        if text.isprintable() and " " not in text:
            return text
    return None


class Request:
    """One HTTP request as the routes see it."""

    __slots__ = ("headers", "body", "request_id", "prediction_id", "trace_id", "predicted")

    def __init__(self, headers: dict, request_id: str, prediction_id: str, trace_id: str | None) -> None:
        self.headers, self.body = headers, b""
        self.request_id, self.prediction_id, self.trace_id = request_id, prediction_id, trace_id
        self.predicted = False


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
        self._admin = config.admin_token.encode() if config.admin_token else None
        outputs = {"prediction": {"type": "number"}}
        if runtime.is_classifier:
            label = {"type": "string"} if self._string_labels() else {"type": "integer"}
            outputs = {"label": label, "probabilities": {"type": "number"}}
        self.output_names = list(outputs)
        self.openapi = orjson.dumps(openapi_document(runtime.columns, info.model, info.version, outputs,
                                                     config.max_rows, self._token is not None))
        self._exact = {
            ("GET", "/ping"): (self.health, False), ("GET", "/health"): (self.health, False),
            ("GET", "/v2/health/live"): (self.live, False), ("GET", "/v2/health/ready"): (self.readiness, False),
            ("GET", "/v2"): (self.server_metadata, True),
            ("POST", "/invocations"): (self.invocations, True),
            ("GET", "/metrics"): (self.metrics_route, True), ("GET", "/version"): (self.version, True),
            ("GET", "/openapi.json"): (self.openapi_route, True),
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
        prediction_id = os.urandom(16).hex()
        client_id = headers.get(b"x-request-id")
        request_id = (header_id(client_id) if client_id is not None else None) or prediction_id
        trace = headers.get(TRACE)
        server = scope.get("server")
        # uvicorn names a unix socket's server (path, None); a TCP one (host, port).
        trace_id = header_id(trace) if trace is not None and server is not None and server[1] is None else None
        request = Request(headers, request_id, prediction_id, trace_id)
        path = scope["path"]
        route = self._exact.get((scope["method"], path))
        route_name = "unknown"
        allow = None
        try:
            if route is None:
                allowed = [method for method, p in self._exact if p == path]
                if allowed:
                    allow = ", ".join(allowed).encode()
                    raise ContractError(405, "METHOD_NOT_ALLOWED", f"{scope['method']} is not allowed on {path}"[:200])
                if path.startswith(MODELS_PREFIX):  # 400 for an invalid name or version, 404 for another model
                    raise unknown_model_route(path, self.runtime.info.model, self.runtime.info.version)
                raise ContractError(404, "NOT_FOUND", f"no route {path[:100]}")
            handler, needs_auth = route
            route_name = handler.__name__
            if needs_auth and self._token is not None:
                self._authorize(headers)
            if client_id is not None and request_id is prediction_id:
                raise bad("X-Request-ID must be 1 to 128 printable ASCII characters without spaces", "X-Request-ID")
            if scope["method"] == "POST":
                request.body = await self._read_body(headers, receive)
            status, payload, content_type = await handler(request)
        except ContractError as error:
            self.metrics.error(error.code.lower())
            status, payload, content_type = error.status, error.body(), JSON
        except Exception:  # a server fault, never the client's input: its details stay in the server's log
            log.exception("request %s (%s %s) failed", prediction_id, scope["method"], path[:100])
            self.metrics.error("internal")
            status, payload, content_type = 500, INTERNAL_ERROR, JSON
        response_headers = [(b"content-type", content_type), (b"x-request-id", request_id.encode())]
        if request.predicted:
            response_headers.append((PREDICTION_ID, prediction_id.encode()))
        if status == 401:
            response_headers.append((b"www-authenticate", b'Bearer realm="modelyard"'))
        elif allow is not None:
            response_headers.append((b"allow", allow))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        if route_name in ("invocations", "v2_infer") and REPLAY in headers and status != 403:
            route_name = "replay"  # a rollout's comparison, not traffic: kept out of latency and the log
        self.metrics.request(route_name, status, time.perf_counter() - started)

    def _replay(self, headers: dict) -> bool:
        """Whether a request is a replay: its replay header carries the admin token (else 403)."""
        value = headers.get(REPLAY)
        if value is None:
            return False
        if self._admin is None or not hmac.compare_digest(value, self._admin):
            raise ContractError(403, "FORBIDDEN", f"{REPLAY_HEADER} needs the admin token", REPLAY_HEADER)
        return True

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
        message = await receive()  # a small body comes whole: no timer on the hot path
        if message["type"] == "http.request" and not message.get("more_body", False):
            body = message.get("body", b"")
            if len(body) > limit:
                raise ContractError(413, "PAYLOAD_TOO_LARGE", f"body exceeds {limit} bytes", "body")
            return body
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a client that stalls mid-body is let go
                return await self._read_chunks(message, receive, limit)
        except TimeoutError:
            raise ContractError(408, "REQUEST_TIMEOUT", f"the body did not arrive within {BODY_TIMEOUT_S} s",
                                "body") from None

    @staticmethod
    async def _read_chunks(message: dict, receive, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            if message["type"] == "http.disconnect":
                raise ContractError(400, "DISCONNECTED", "the client went away", "body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ContractError(413, "PAYLOAD_TOO_LARGE", f"body exceeds {limit} bytes", "body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
            message = await receive()

    # -- routes ------------------------------------------------------------------------------

    async def health(self, request: Request):
        return (200 if self.ready else 503), b'{"status":"ok"}' if self.ready else b'{"status":"loading"}', JSON

    async def live(self, request: Request):
        return 200, b'{"live":true}', JSON

    async def readiness(self, request: Request):
        return (200 if self.ready else 503), orjson.dumps({"ready": self.ready}), JSON

    async def model_ready(self, request: Request):
        return (200 if self.ready else 503), orjson.dumps({"name": self.runtime.info.model, "ready": self.ready}), JSON

    async def server_metadata(self, request: Request):
        return 200, orjson.dumps({"name": "modelyard", "version": "0.1.0", "extensions": []}), JSON

    async def model_metadata(self, request: Request):
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

    async def version(self, request: Request):
        return 200, orjson.dumps(self.runtime.info.__dict__), JSON

    async def openapi_route(self, request: Request):
        return 200, self.openapi, JSON

    async def metrics_route(self, request: Request):
        stats = self.log.stats() if self.log is not None else None
        return 200, self.metrics.render(stats), b"text/plain; version=0.0.4"

    async def invocations(self, request: Request):
        replay = self._replay(request.headers)
        content_type = request.headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == b"application/json":
            columns = self.contract.from_mlflow_json(parse_json(request.body))
        elif content_type == b"text/csv":
            columns = self.contract.from_csv(request.body)
        else:
            raise ContractError(415, "UNSUPPORTED_MEDIA_TYPE",
                                f"content type '{content_type.decode('latin-1')[:100] or 'none'}' is not supported; "
                                "use application/json or text/csv", "Content-Type")
        prediction = await self._predict(columns, request, log=not replay)
        return 200, orjson.dumps({"predictions": jsonable(prediction.labels)}, option=orjson.OPT_SERIALIZE_NUMPY), JSON

    async def v2_infer(self, request: Request):
        replay = self._replay(request.headers)
        content_type = request.headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if content_type not in (b"application/json", b""):
            raise ContractError(415, "UNSUPPORTED_MEDIA_TYPE", "the v2 protocol takes application/json here", "Content-Type")
        if b"inference-header-content-length" in request.headers:
            raise ContractError(415, "UNSUPPORTED_MEDIA_TYPE", "binary tensor data is not supported; send JSON data",
                                "Inference-Header-Content-Length")
        payload = parse_json(request.body)
        columns = self.contract.from_v2(payload)
        wanted = self.contract.requested_outputs(payload, self.output_names)  # checked before the model runs
        prediction = await self._predict(columns, request, log=not replay)
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
        if wanted is not None:
            outputs = [o for o in outputs if o["name"] in wanted]
        response = {"model_name": info.model, "model_version": info.version, "outputs": outputs}
        if "id" in payload:
            response["id"] = payload["id"]
        return 200, orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), JSON

    async def _predict(self, columns: dict[str, np.ndarray], request: Request, log: bool = True) -> Prediction:
        received = time.time()
        prediction = await self.batcher.submit(columns)
        request.predicted = True
        if self.log is not None and log:
            logged = MatrixColumns(columns.names, columns.matrix) if isinstance(columns, MatrixBatch) else columns
            size = len(request.body) + prediction.labels.nbytes
            if prediction.probabilities is not None:
                size += prediction.probabilities.nbytes
            self.log.submit(request.request_id, received, logged, prediction.labels, prediction.probabilities,
                            prediction_id=request.prediction_id, trace_id=request.trace_id, size_bytes=size)
        return prediction
