"""The inference server's ASGI app, driven in-process with a stand-in model: client input gets a 4xx
naming the field (never a 5xx), a server fault a 500 without its details, the OpenAPI document
states the contract the server enforces, and ids, trace ids and replays are honoured only as
they should be."""

from __future__ import annotations

import asyncio
import json
import math

import jsonschema
import numpy as np
import orjson
import pytest

from deployments.server.app import InferenceApp, ServerConfig
from deployments.server.model_runtime import ColumnSpec, Prediction, VersionInfo
from modelyard.catalog import PREDICTION_ID_HEADER, REPLAY_HEADER, TRACE_HEADER

COLUMNS = [ColumnSpec("amount", "double"), ColumnSpec("age", "double", nullable=True), ColumnSpec("city", "string")]
ROW = {"amount": 12.5, "age": 40, "city": "oslo"}
ADMIN = "admin-secret"
TCP = ("127.0.0.1", 8080)
UNIX = ("/tmp/serving.sock", None)


class StandIn:
    """What the app needs of a ModelRuntime: columns, info, a classifier's classes, predict."""

    def __init__(self, fail: bool = False) -> None:
        self.columns, self.fail = COLUMNS, fail
        self.info = VersionInfo("fraud", "3", "run", "sha", "pyfunc")
        self.is_classifier, self.classes = True, [0, 1]
        self.seen: list[dict] = []

    def predict(self, columns) -> Prediction:
        if self.fail:
            raise RuntimeError("secret model internals at /opt/model.onnx")
        self.seen.append({name: np.asarray(columns[name]) for name in columns})
        rows = len(columns["amount"])
        return Prediction(np.zeros(rows, dtype=np.int64), np.full((rows, 2), 0.5), self.classes)


class Log:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def submit(self, request_id, received, columns, labels, probabilities, **ids) -> bool:
        self.records.append({"request_id": request_id, **ids})
        return True

    def start(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict:
        return {}


def _app(fail: bool = False, token: str | None = None) -> tuple[InferenceApp, Log]:
    log = Log()
    app = InferenceApp(StandIn(fail), ServerConfig(api_token=token, admin_token=ADMIN, max_rows=100), log)
    app.batcher.run_inline = True
    return app, log


def call(app: InferenceApp, method: str, path: str, body: bytes = b"", headers: dict | None = None,
         server=TCP) -> tuple[int, dict, bytes]:
    async def run():
        app.batcher.start()  # each call runs on its own event loop
        app.ready = True
        scope = {"type": "http", "method": method, "path": path, "server": server,
                 "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent

    sent = asyncio.run(run())
    head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], head, sent[1]["body"]


def post(app, payload, path="/invocations", headers=None, server=TCP, raw: bytes | None = None):
    body = raw if raw is not None else orjson.dumps(payload)
    return call(app, "POST", path, body, {"Content-Type": "application/json", **(headers or {})}, server)


def _split(*rows: list) -> dict:
    return {"dataframe_split": {"columns": list(ROW), "data": [list(r) for r in rows]}}


V2 = {"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": [12.5]},
                 {"name": "age", "shape": [1], "datatype": "FP64", "data": [40]},
                 {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["oslo"]}]}

# The 500s, and their kin: each a 4xx naming the field.
CLIENT_FAULTS = {
    "integer beyond int64": (json.dumps(_split([2**64, 40, "oslo"])).encode(), "amount"),
    "integer beyond a double": (json.dumps(_split([10**400, 40, "oslo"])).encode(), "amount"),
    "integer just past the bound": (json.dumps(_split([-(2**63) - 1, 40, "oslo"])).encode(), "amount"),
    "nested lists in a numeric column": (orjson.dumps(_split([[1, [2]], 40, "oslo"])), "amount"),
    "nested lists, all-numeric shape": (orjson.dumps(_split([[1.0], [2.0], "oslo"])), "amount"),
    "omitted column": (orjson.dumps({"dataframe_records": [{"amount": 1.0, "city": "oslo"}]}), "age"),
    "null where training had no gaps": (orjson.dumps(_split([None, 40, "oslo"])), "amount"),
    "NaN where training had no gaps": (b'{"dataframe_split": {"columns": ["amount", "age", "city"], '
                                       b'"data": [[NaN, 1, "oslo"]]}}', "amount"),
    "deeply nested JSON": (b"[" * 100_000 + b"]" * 100_000, "body"),
    "lone surrogate": (b'{"dataframe_records": [{"amount": 1, "age": 1, "city": "\\ud800"}]}', "body"),
    "unknown top-level field": (orjson.dumps({**_split([1, 2, "x"]), "extra": 1}), "extra"),
    "boolean as a number": (orjson.dumps(_split([True, 40, "oslo"])), "amount"),
    "too many rows": (orjson.dumps(_split(*[[1.0, 2.0, "x"]] * 101)), "dataframe_split"),
}


@pytest.mark.parametrize("case", sorted(CLIENT_FAULTS))
def test_client_faults_get_a_400_naming_the_field_and_log_nothing(case):
    app, log = _app()
    body, field = CLIENT_FAULTS[case]
    status, _, answer = post(app, None, raw=body)
    assert status == 400, answer
    assert orjson.loads(answer)["field"] == field
    assert log.records == [] and app.runtime.seen == []


def test_a_csv_field_over_128_kb_is_a_400():
    app, _ = _app()
    csv = f"amount,age,city\n1,2,{'x' * 200_000}\n".encode()
    status, _, answer = call(app, "POST", "/invocations", csv, {"Content-Type": "text/csv"})
    assert status == 400 and orjson.loads(answer)["field"] == "body", answer


@pytest.mark.parametrize("outputs", [{"name": "label"}, [{"name": ["label"]}], [{"name": {}}], "label",
                                     [{"name": "nope"}]])
def test_bad_v2_outputs_are_refused_before_the_model_runs(outputs):
    app, log = _app()
    status, _, answer = post(app, {**V2, "outputs": outputs}, path="/v2/models/fraud/infer")
    assert status == 400 and orjson.loads(answer)["field"].startswith("outputs"), answer
    assert app.runtime.seen == [] and log.records == []


def test_v2_datatype_of_any_json_type_is_a_400():
    app, _ = _app()
    for datatype in ({}, [], 3, None, "BYTES"):
        inputs = [dict(V2["inputs"][0], datatype=datatype), *V2["inputs"][1:]]
        status, _, answer = post(app, {"inputs": inputs}, path="/v2/models/fraud/infer")
        assert status == 400 and orjson.loads(answer)["field"] == "amount.datatype", answer


def test_missing_values_are_taken_only_where_training_had_them():
    app, log = _app()
    for body in (_split([1.0, None, "oslo"]), {"dataframe_records": [{**ROW, "age": None}]},
                 {"inputs": [dict(V2["inputs"][0]), dict(V2["inputs"][1], data=[None]), V2["inputs"][2]]}):
        path = "/v2/models/fraud/infer" if "inputs" in body else "/invocations"
        status, _, answer = post(app, body, path=path)
        assert status == 200, answer
    nan = b'{"dataframe_split": {"columns": ["amount", "age", "city"], "data": [[1, NaN, "oslo"]]}}'
    assert post(app, None, raw=nan)[0] == 200
    status, _, _ = call(app, "POST", "/invocations", b"amount,age,city\n1,,oslo\n", {"Content-Type": "text/csv"})
    assert status == 200
    assert all(math.isnan(seen["age"][0]) for seen in app.runtime.seen)
    assert call(app, "POST", "/invocations", b"amount,age,city\n,1,oslo\n", {"Content-Type": "text/csv"})[0] == 400


def test_a_server_fault_is_a_generic_500_without_its_details(caplog):
    app, log = _app(fail=True)
    status, head, answer = post(app, _split([1.0, 2.0, "oslo"]))
    assert status == 500
    assert orjson.loads(answer) == {"error_code": "INTERNAL_ERROR", "message": "internal server error"}
    assert b"secret" not in answer and PREDICTION_ID_HEADER.lower() not in head
    assert "secret model internals" in caplog.text  # kept in the server's own log, with its trace
    assert log.records == []


def test_each_prediction_gets_a_unique_server_id_and_keeps_the_clients():
    app, log = _app()
    answers = [post(app, _split([1.0, 2.0, "oslo"]), headers={"X-Request-ID": "client-7"}) for _ in range(3)]
    ids = [head[PREDICTION_ID_HEADER.lower()] for _, head, _ in answers]
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    assert {head["x-request-id"] for _, head, _ in answers} == {"client-7"}
    assert [(r["request_id"], r["prediction_id"]) for r in log.records] == [("client-7", i) for i in ids]
    _, head, _ = post(app, _split([1.0, 2.0, "oslo"]))
    assert head["x-request-id"] == head[PREDICTION_ID_HEADER.lower()]  # no client id: the server's
    status, _, answer = post(app, _split([1.0, 2.0, "oslo"]), headers={"X-Request-ID": "has space"})
    assert status == 400 and orjson.loads(answer)["field"] == "X-Request-ID"


def test_the_trace_header_is_logged_from_the_unix_socket_only():
    app, log = _app()
    post(app, _split([1.0, 2.0, "oslo"]), headers={TRACE_HEADER: "router-1"}, server=UNIX)
    post(app, _split([1.0, 2.0, "oslo"]), headers={TRACE_HEADER: "forged"}, server=TCP)
    post(app, _split([1.0, 2.0, "oslo"]), server=UNIX)
    assert [r["trace_id"] for r in log.records] == ["router-1", None, None]


def test_a_replay_needs_the_admin_token():
    app, log = _app()
    refused = post(app, _split([1.0, 2.0, "oslo"]), headers={REPLAY_HEADER: "1"})
    assert refused[0] == 403 and orjson.loads(refused[2])["field"] == REPLAY_HEADER
    assert app.runtime.seen == [] and log.records == []
    status, _, _ = post(app, _split([1.0, 2.0, "oslo"]), headers={REPLAY_HEADER: ADMIN})
    assert status == 200 and log.records == []  # answered, kept out of the log
    assert 'route="replay",status="200"' in call(app, "GET", "/metrics")[2].decode()


def test_an_unsupported_method_says_which_are_allowed():
    app, _ = _app()
    status, head, _ = call(app, "DELETE", "/invocations")
    assert status == 405 and head["allow"] == "POST"


# -- the OpenAPI document states what the contract enforces ---------------------------------------

AGREEMENT = [
    _split([1.0, 2.0, "a"]), _split([1.0, None, "a"]), _split([None, 2.0, "a"]), _split([1, 2, 3]),
    _split([2**63 - 1, 0, "a"]), _split([2**63, 0, "a"]), _split([-(2**63 - 1), 0, "a"]), _split([-(2**63), 0, "a"]),
    {"dataframe_records": [ROW]}, {"dataframe_records": [{**ROW, "age": None}]}, {"dataframe_records": []},
    {"dataframe_records": [{"amount": 1.0, "city": "a"}]}, {"dataframe_records": [{**ROW, "x": 1}]},
    {"instances": [ROW]}, {"instances": [[1.0, 2.0, "a"]]}, {"inputs": [[1.0, 2.0]]},
    {"dataframe_records": [ROW], "params": {"k": 1}}, {"dataframe_records": [ROW], "params": 3},
    {"dataframe_records": [ROW], "other": 1}, {"dataframe_split": {"columns": list(ROW), "data": [[1, 2, "a"]],
                                                                    "index": [0]}},
    {"dataframe_split": {"columns": list(ROW), "data": [[1, 2, "a"]], "index": "x"}},
    {"dataframe_split": {"columns": list(ROW), "data": [[1, 2, "a"]], "extra": 1}},
    {"dataframe_records": [{**ROW, "amount": True}]}, {"dataframe_records": [{**ROW, "city": 3}]},
]


def _invocations_schema(app: InferenceApp) -> dict:
    document = orjson.loads(app.openapi)
    schema = document["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return schema


@pytest.mark.parametrize("index", range(len(AGREEMENT)))
def test_openapi_schema_accepts_exactly_what_the_contract_accepts(index):
    app, _ = _app()
    body = AGREEMENT[index]
    valid = jsonschema.Draft202012Validator(_invocations_schema(app)).is_valid(body)
    status, _, answer = post(app, body)
    assert (status == 200) == valid, (body, status, answer)


def test_openapi_document_names_columns_types_auth_and_both_protocols():
    app, _ = _app(token="t")
    document = orjson.loads(app.openapi)
    jsonschema.Draft202012Validator.check_schema(_invocations_schema(app))
    assert document["openapi"].startswith("3.")
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert {"/invocations", "/v2/models/{model_name}/infer", "/v2/health/ready"} <= set(document["paths"])
    records = next(o for o in _invocations_schema(app)["oneOf"] if "dataframe_records" in o["required"])
    columns = records["properties"]["dataframe_records"]["items"]["properties"]
    assert columns["amount"]["type"] == "number" and columns["age"]["type"] == ["number", "null"]
    assert columns["city"]["type"] == "string"
    assert {"400", "401", "403", "413", "415"} <= set(document["paths"]["/invocations"]["post"]["responses"])
    assert call(app, "GET", "/openapi.json")[0] == 401
    assert call(app, "GET", "/openapi.json", headers={"Authorization": "Bearer t"})[2] == app.openapi
