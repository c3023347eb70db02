"""The inference server with real clients: MLflow scoring formats, the v2 protocol through
tritonclient, the input contract (missing values where training had gaps), auth, replays, ids and
trace ids, the prediction log and its retention, and graceful shutdown."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from deployments.server.prediction_log import PredictionLog, read_prediction_log
from modelyard.catalog import PREDICTION_ID_HEADER, REPLAY_HEADER, TRACE_HEADER, Action
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.inference import InferenceClient
from modelyard.signing import TAG_SIGNER
from tests.support.servers import ServerProcess, start_server
from tests.support.stacks import free_port, quiet
from tests.support.waits import wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"
TOKEN = "test-token-123"
# uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so supervisors see it.
GRACEFUL_EXIT = (0, -signal.SIGTERM)


def _train(name: str, estimator: dict, folder: Path, base: str = "fraud.yaml", source: str | None = None) -> str:
    from flows.pipeline import model_pipeline

    spec = yaml.safe_load((SPECS / base).read_text())
    spec["name"] = name
    if source is None:
        spec["data"]["generator_params"] = {"n_rows": 4000, "seed": 11}
    else:
        spec["data"]["source"] = source
    spec["estimator"] = estimator
    spec["policy"] = {"min_metrics": {"roc_auc": 0.6}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(quiet(spec)))
    outcome = model_pipeline(str(path))
    assert outcome["passed"]
    return outcome["version"]


@pytest.fixture(scope="module")
def models(stack_env: Stack, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("serving-models")
    onnx_version = _train("fraud-serve", {"kind": "gradient_boosting", "params": {"n_estimators": 40, "max_depth": 3}}, folder)
    pyfunc_version = _train("fraud-serve-hgb", {"kind": "hist_gradient_boosting", "params": {"max_iter": 30}}, folder)
    return {"onnx": f"models:/fraud-serve/{onnx_version}", "pyfunc": f"models:/fraud-serve-hgb/{pyfunc_version}"}


def _pipeline(uri: str):
    """The version's scikit-learn pipeline, verified and loaded with skops as the server would
    (the reference its answers are compared with)."""
    from deployments.server.main import resolve_model_dir
    from deployments.server.model_runtime import load_verified_pipeline
    from modelyard.settings import get_settings

    settings = get_settings()
    return load_verified_pipeline(settings, resolve_model_dir(uri, settings), uri)


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    from tasks.demo_data import generate_transactions

    frame = generate_transactions(n_rows=300, seed=99)
    return frame.drop(columns=["transaction_id", "timestamp", "is_fraud"])


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].astype(float)
    return out


@pytest.fixture(scope="module")
def server(stack_env: Stack, models, tmp_path_factory) -> ServerProcess:
    env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN}
    process = start_server(models["onnx"], env, tmp_path_factory.mktemp("server") / "server.log")
    yield process
    process.stop()


def _auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def _post(url: str, **kwargs) -> requests.Response:
    headers = {**_auth(), **kwargs.pop("headers", {})}
    return requests.post(url, headers=headers, timeout=30, **kwargs)


def test_every_mlflow_format_gives_the_registered_models_predictions(server, models, holdout):
    reference = _pipeline(models["onnx"])
    rows = _features(holdout.head(40))
    expected = reference.predict(rows).tolist()
    url = f"{server.url}/invocations"
    bodies = {
        "dataframe_split": {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))},
        "dataframe_records": {"dataframe_records": json.loads(rows.to_json(orient="records"))},
        "instances": {"instances": json.loads(rows.to_json(orient="records"))},
        "inputs": {"inputs": {c: rows[c].tolist() for c in rows.columns}},
    }
    for name, body in bodies.items():
        response = _post(url, json=body)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["predictions"] == expected, name
    csv_response = _post(url, data=rows.to_csv(index=False), headers={"Content-Type": "text/csv"})
    assert csv_response.status_code == 200, csv_response.text
    assert csv_response.json()["predictions"] == expected


def test_open_inference_protocol_v2_with_tritonclient(server, models, holdout):
    import tritonclient.http as triton

    reference = _pipeline(models["onnx"])
    name = models["onnx"].split("/")[1]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    metadata = client.get_model_metadata(name, headers=_auth())
    assert metadata["name"] == name and metadata["platform"] == "onnxruntime_onnx"
    by_input = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    assert by_input["amount"] == "FP64" and by_input["merchant_category"] == "BYTES"
    rows = _features(holdout.head(25))
    inputs = []
    for column in rows.columns:
        if by_input[column] == "BYTES":
            tensor = triton.InferInput(column, [len(rows)], "BYTES")
            tensor.set_data_from_numpy(rows[column].to_numpy(dtype=object), binary_data=False)
        else:
            tensor = triton.InferInput(column, [len(rows)], "FP64")
            tensor.set_data_from_numpy(rows[column].to_numpy(dtype=np.float64), binary_data=False)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("label", binary_data=False),
               triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer(name, inputs, outputs=outputs, request_id="abc-1", headers=_auth())
    assert result.as_numpy("label").tolist() == reference.predict(rows).tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference.predict_proba(rows), atol=1e-5)
    assert result.get_response()["id"] == "abc-1"


def _records(rows: pd.DataFrame) -> list[dict]:
    return json.loads(rows.to_json(orient="records"))


CONTRACT_CASES = {
    "missing column": (lambda r: {"dataframe_records": [{k: v for k, v in r.items() if k != "amount"}]}, 400, "amount"),
    "extra column": (lambda r: {"dataframe_records": [{**r, "surprise": 1}]}, 400, "surprise"),
    "wrong type": (lambda r: {"dataframe_records": [{**r, "amount": "lots"}]}, 400, "amount"),
    "string where number": (lambda r: {"dataframe_records": [{**r, "hour": None}]}, 400, "hour"),
    "number where string": (lambda r: {"dataframe_records": [{**r, "country": 44}]}, 400, "country"),
    "empty batch": (lambda r: {"dataframe_records": []}, 400, "dataframe_records"),
    "two formats": (lambda r: {"dataframe_records": [r], "instances": [r]}, 400, "body"),
    "ragged split": (lambda r: {"dataframe_split": {"columns": list(r), "data": [list(r.values())[:-1]]}}, 400, "dataframe_split.data[0]"),
}


@pytest.mark.parametrize("case", sorted(CONTRACT_CASES))
def test_input_contract_names_the_field(server, holdout, case):
    make, status, field = CONTRACT_CASES[case]
    row = _records(_features(holdout.head(1)))[0]
    response = _post(f"{server.url}/invocations", json=make(row))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and body["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_naming_the_column(server, holdout, literal):
    row = _records(_features(holdout.head(1)))[0]
    body = json.dumps({"dataframe_records": [{**row, "amount": 0.5}]}).replace('"amount": 0.5', f'"amount": {literal}')
    response = _post(f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["field"] == "amount"


def test_malformed_json_wrong_content_type_and_oversized_body(server, holdout):
    url = f"{server.url}/invocations"
    malformed = _post(url, data=b'{"dataframe_records": [', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"
    wrong_type = _post(url, data=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert wrong_type.status_code == 415 and wrong_type.json()["field"] == "Content-Type"
    huge = _post(url, data=b"x" * (9 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    csv_nan = _post(url, data=_features(holdout.head(2)).assign(amount=["nan", "1"]).to_csv(index=False),
                    headers={"Content-Type": "text/csv"})
    assert csv_nan.status_code == 400 and csv_nan.json()["field"] == "amount"
    v2_bad_shape = _post(f"{server.url}/v2/models/fraud-serve/infer",
                         json={"inputs": [{"name": "amount", "shape": [2], "datatype": "FP64", "data": [1.0]}]})
    assert v2_bad_shape.status_code == 400 and v2_bad_shape.json()["field"] == "amount.data"
    # After all that, the server still answers correctly.
    good = _post(url, json={"dataframe_records": _records(_features(holdout.head(3)))})
    assert good.status_code == 200 and len(good.json()["predictions"]) == 3
    metrics = requests.get(f"{server.url}/metrics", headers=_auth(), timeout=10).text
    assert 'kind="bad_request"' in metrics and 'kind="payload_too_large"' in metrics
    assert 'kind="internal"' not in metrics


def test_auth_is_required_on_inference_and_admin_routes_but_not_health(server, holdout):
    body = {"dataframe_records": _records(_features(holdout.head(1)))}
    assert requests.post(f"{server.url}/invocations", json=body, timeout=10).status_code == 401
    wrong = requests.post(f"{server.url}/invocations", json=body, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["field"] == "Authorization"
    for path in ("/metrics", "/version", "/v2/models/fraud-serve"):
        assert requests.get(f"{server.url}{path}", timeout=10).status_code == 401
    for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/v2/models/fraud-serve/ready"):
        assert requests.get(f"{server.url}{path}", timeout=10).status_code == 200
    version = requests.get(f"{server.url}/version", headers=_auth(), timeout=10).json()
    assert version["model"] == "fraud-serve" and version["serving_format"] == "onnx"
    registered = mlflow.MlflowClient().get_model_version("fraud-serve", version["version"])
    assert version["artifact_sha256"] == registered.tags["modelyard.artifact_sha256"]
    assert version["signer"] == registered.tags[TAG_SIGNER]  # whose signature the server verified


def test_prediction_log_keeps_every_request_under_concurrent_load(server, stack_env, holdout):
    rows = _records(_features(holdout.head(50)))
    ids = [f"load-{uuid.uuid4().hex[:8]}-{i}" for i in range(400)]

    def call(i: int) -> int:
        response = _post(f"{server.url}/invocations", json={"dataframe_records": [rows[i % 50]]},
                         headers={"X-Request-ID": ids[i]})
        assert response.headers["x-request-id"] == ids[i]
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(len(ids))))
    assert statuses == [200] * len(ids)
    generated = requests.post(f"{server.url}/invocations", json={"dataframe_records": rows[:1]}, headers=_auth(), timeout=10)
    assert len(generated.headers["x-request-id"]) == 32
    version = requests.get(f"{server.url}/version", headers=_auth(), timeout=10).json()["version"]
    log_root = stack_env.settings.prediction_log_dir
    wait_until(lambda: set(ids) <= set(read_prediction_log(log_root, "fraud-serve", version)["request_id"]), 15,
               "every request in the prediction log")
    logged = read_prediction_log(log_root, "fraud-serve", version)
    mine = logged[logged["request_id"].isin(ids)]
    assert len(mine) == len(ids) and mine["request_id"].is_unique
    first = mine.set_index("request_id").loc[ids[0]]
    assert math.isclose(first["input.amount"], rows[0]["amount"])
    assert len(first["probability"]) == 2
    hours = {p.name for p in (log_root / "model=fraud-serve" / f"version={version}").iterdir()}
    assert all(h.startswith("hour=") for h in hours)


def test_pyfunc_model_served_without_auth_counts_log_drops(stack_env, models, holdout, tmp_path):
    env = stack_env.settings.child_env() | {"MODELYARD_SERVE_ANONYMOUS": "true", "MODELYARD_PREDICTION_LOG_QUEUE": "1"}
    env.pop("MODELYARD_API_TOKEN", None)
    process = start_server(models["pyfunc"], env, tmp_path / "pyfunc.log")
    try:
        reference = _pipeline(models["pyfunc"])
        rows = _features(holdout.head(30))
        tag = f"drops-{uuid.uuid4().hex[:8]}"
        response = requests.post(f"{process.url}/invocations", json={"dataframe_records": _records(rows)},
                                 headers={"X-Request-ID": f"{tag}-first"}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == reference.predict(rows).tolist()
        assert requests.get(f"{process.url}/version", timeout=10).json()["serving_format"] == "pyfunc"
        one_row = {"dataframe_records": _records(rows.head(1))}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: requests.post(f"{process.url}/invocations", json=one_row, timeout=30,
                                                             headers={"X-Request-ID": f"{tag}-{i}"}).status_code, range(300)))
        assert statuses == [200] * 300
        metrics = requests.get(f"{process.url}/metrics", timeout=10).text
        values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("modelyard_prediction_log_")}
        assert "modelyard_prediction_log_dropped_total" in values
    finally:
        assert process.stop() in GRACEFUL_EXIT
    version = models["pyfunc"].rsplit("/", 1)[1]
    logged = read_prediction_log(stack_env.settings.prediction_log_dir, "fraud-serve-hgb", version)
    # Only this test's requests: an event-triggered deploy of the same version may log its smoke request.
    logged_requests = logged.loc[logged["request_id"].str.startswith(tag), "request_id"].nunique()
    # Every prediction request is either in the log or counted as dropped (requests, not rows).
    assert logged_requests + values["modelyard_prediction_log_dropped_total"] == 301


def test_sigterm_lets_in_flight_requests_finish_and_flushes_the_log(stack_env, models, holdout, tmp_path):
    env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN, "MODELYARD_SERVE_MAX_WAIT_MS": "1500",
                                            "MODELYARD_SERVE_MAX_BATCH": "1000"}
    process = start_server(models["onnx"], env, tmp_path / "sigterm.log")
    rows = _records(_features(holdout.head(8)))
    ids = [f"term-{uuid.uuid4().hex[:8]}-{i}" for i in range(8)]
    results: dict[str, int] = {}

    def call(i: int) -> None:
        response = _post(f"{process.url}/invocations", json={"dataframe_records": [rows[i]]}, headers={"X-Request-ID": ids[i]})
        results[ids[i]] = response.status_code

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # all 8 are now waiting in the 1.5 s micro-batch window
    process.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=30)
    assert process.process.wait(timeout=30) in GRACEFUL_EXIT
    assert results == {i: 200 for i in ids}
    version = models["onnx"].rsplit("/", 1)[1]
    logged = read_prediction_log(stack_env.settings.prediction_log_dir, "fraud-serve", version)
    assert set(ids) <= set(logged["request_id"])


def test_tampered_artifact_refuses_to_serve(stack_env, models, tmp_path):
    """The served files must hash to the sha256 recorded at registration."""
    from deployments.server.main import resolve_model_dir

    name, version = models["onnx"].removeprefix("models:/").split("/")
    cached = resolve_model_dir(models["onnx"], stack_env.settings)
    onnx_file = next(cached.rglob("model.onnx"))
    original = onnx_file.read_bytes()
    onnx_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN}
        with pytest.raises(RuntimeError) as refused:
            start_server(models["onnx"], env, tmp_path / "tampered.log")
        assert "refusing to serve a tampered artifact" in " ".join(str(refused.value).split())  # as the log wrapped it
    finally:
        onnx_file.write_bytes(original)
    # Restored files serve again.
    process = start_server(models["onnx"], stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN},
                           tmp_path / "restored.log")
    assert process.stop() in GRACEFUL_EXIT


# -- missing values: a public dataset with gaps ---------------------------------------------------

GAP_COLUMNS = ("mean_radius", "worst_texture")


@pytest.fixture(scope="module")
def gaps_model(stack_env: Stack, tmp_path_factory) -> str:
    """scikit-learn's breast-cancer data with gaps put into two numeric columns (every 5th and
    every 7th row), trained by the model pipeline with a tree model that takes missing values."""
    from tasks.data import load_sklearn_dataset

    folder = tmp_path_factory.mktemp("gaps-model")
    frame = load_sklearn_dataset("breast_cancer")
    frame.loc[frame.index % 5 == 0, GAP_COLUMNS[0]] = np.nan
    frame.loc[frame.index % 7 == 3, GAP_COLUMNS[1]] = np.nan
    frame.to_parquet(folder / "breast_cancer_gaps.parquet", index=False)
    version = _train("cancer-gaps", {"kind": "hist_gradient_boosting", "params": {"max_iter": 30}}, folder,
                     base="breast_cancer.yaml", source=str(folder / "breast_cancer_gaps.parquet"))
    return f"models:/cancer-gaps/{version}"


def test_missing_values_are_served_where_training_had_gaps_and_refused_elsewhere(stack_env, gaps_model, tmp_path):
    from tasks.data import load_sklearn_dataset

    reference = _pipeline(gaps_model)
    rows = load_sklearn_dataset("breast_cancer").drop(columns=["target"]).head(6).astype(float)
    rows.loc[[0, 2], GAP_COLUMNS[0]] = np.nan
    rows.loc[[1, 2], GAP_COLUMNS[1]] = np.nan
    env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN}
    process = start_server(gaps_model, env, tmp_path / "gaps.log")
    try:
        url = f"{process.url}/invocations"
        split = {"dataframe_split": {"columns": list(rows.columns),
                                     "data": rows.astype(object).where(rows.notna(), None).values.tolist()}}
        answer = _post(url, json=split)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == reference.predict(rows).tolist()
        csv = _post(url, data=rows.to_csv(index=False, na_rep=""), headers={"Content-Type": "text/csv"})
        assert csv.status_code == 200 and csv.json()["predictions"] == answer.json()["predictions"], csv.text
        # NaN literals, as MLflow writes them in a serving input example, are missing values too.
        literal = json.dumps(split).replace("null", "NaN")
        assert _post(url, data=literal, headers={"Content-Type": "application/json"}).status_code == 200
        # A column that had no gaps in training refuses them, naming itself.
        no_gaps = rows.assign(mean_texture=[None] + rows["mean_texture"].tolist()[1:])
        refused = _post(url, json={"dataframe_records": json.loads(no_gaps.head(1).to_json(orient="records"))})
        assert refused.status_code == 400 and refused.json()["field"] == "mean_texture", refused.text
        document = requests.get(f"{process.url}/openapi.json", headers=_auth(), timeout=10).json()
        records = next(o for o in document["paths"]["/invocations"]["post"]["requestBody"]["content"]
                       ["application/json"]["schema"]["oneOf"] if "dataframe_records" in o["required"])
        types = {name: column["type"] for name, column in
                 records["properties"]["dataframe_records"]["items"]["properties"].items()}
        assert {name for name, kind in types.items() if kind == ["number", "null"]} == set(GAP_COLUMNS)
        assert requests.get(f"{process.url}/version", headers=_auth(), timeout=10).json()["serving_format"] == "pyfunc"
    finally:
        assert process.stop() in GRACEFUL_EXIT


# -- ids, trace ids and replays -------------------------------------------------------------------


def _start_with_socket(model: str, env: dict, folder: Path) -> tuple[subprocess.Popen, str, Path]:
    """A server listening on TCP and on a unix socket (the router's way in)."""
    port, sock = free_port(), folder / "serving.sock"
    log = open(folder / "uds.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "modelyard.cli", "serve", model, "--port", str(port),
                                "--uds", str(sock)], env={"PATH": os.environ.get("PATH", ""), **env},
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return process.poll() is not None

    wait_until(ready, 180, "the server to be ready")
    assert process.poll() is None, (folder / "uds.log").read_text()[-3000:]
    return process, url, sock


def test_prediction_ids_are_unique_and_trace_ids_come_only_through_the_unix_socket(stack_env, models, holdout,
                                                                                    tmp_path):
    env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN}
    process, url, sock = _start_with_socket(models["onnx"], env, tmp_path)
    try:
        body = {"dataframe_records": _records(_features(holdout.head(2)))}
        tag = f"ids-{uuid.uuid4().hex[:8]}"
        over_tcp = [_post(f"{url}/invocations", json=body, headers={"X-Request-ID": tag, TRACE_HEADER: f"{tag}-forged"})
                    for _ in range(3)]
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), headers=_auth()) as router:
            over_unix = router.post("http://router/invocations", json=body,
                                    headers={"X-Request-ID": tag, TRACE_HEADER: f"{tag}-trace"})
        answers = [*over_tcp, over_unix]
        assert [a.status_code for a in answers] == [200] * 4
        ids = [a.headers[PREDICTION_ID_HEADER] for a in answers]
        assert len(set(ids)) == 4 and {a.headers["x-request-id"] for a in answers} == {tag}
        version = models["onnx"].rsplit("/", 1)[1]
        log_root = stack_env.settings.prediction_log_dir

        def mine():
            logged = read_prediction_log(log_root, "fraud-serve", version)
            return logged[logged["request_id"] == tag]

        wait_until(lambda: len(mine()) == 8, 15, "the four requests in the prediction log")
        logged = mine()
        assert sorted(set(logged["prediction_id"])) == sorted(ids)
        traces = dict(zip(logged["prediction_id"], logged["trace_id"], strict=True))
        assert traces[ids[3]] == f"{tag}-trace"
        assert all(pd.isna(traces[i]) for i in ids[:3])  # null: TCP is not the router's way in
    finally:
        process.terminate()
        assert process.wait(timeout=30) in GRACEFUL_EXIT


def test_replays_need_the_admin_token_and_stay_out_of_the_log(stack_env, server, models, holdout):
    version = models["onnx"].rsplit("/", 1)[1]
    log_root = stack_env.settings.prediction_log_dir
    frame = _features(holdout.head(5))
    forged = _post(f"{server.url}/invocations", json={"dataframe_records": _records(frame)},
                   headers={REPLAY_HEADER: "1", "X-Request-ID": "forged-replay"})
    assert forged.status_code == 403 and forged.json()["field"] == REPLAY_HEADER
    client = InferenceClient(TOKEN, stack_env.settings.state_dir / "models", stack_env.settings.admin_secret())
    before = len(read_prediction_log(log_root, "fraud-serve", version))
    answers = client.replay(frame, server.url)
    assert answers.tolist() == _pipeline(models["onnx"]).predict(frame).tolist()
    metrics = requests.get(f"{server.url}/metrics", headers=_auth(), timeout=10).text
    assert 'route="replay",status="200"' in metrics
    time.sleep(2)  # two flush intervals: anything logged would be on disk by now
    logged = read_prediction_log(log_root, "fraud-serve", version)
    assert len(logged) == before and "forged-replay" not in set(logged["request_id"])


def test_partitions_past_retention_are_deleted_and_recorded(stack_env, models, tmp_path):
    name, version = models["pyfunc"].removeprefix("models:/").split("/")
    root = stack_env.settings.prediction_log_dir
    old = datetime.now(UTC) - timedelta(days=3)
    plog = PredictionLog(root, name, "0")
    plog.submit("ancient", old.timestamp(), {"amount": [1.0, 2.0]}, [0, 1], prediction_id="p-old")
    plog.close()
    partition = root / f"model={name}" / "version=0" / f"hour={old:%Y-%m-%dT%H}"
    assert partition.is_dir()
    env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN, "MODELYARD_PREDICTION_LOG_RETENTION_DAYS": "1"}
    process = start_server(models["pyfunc"], env, tmp_path / "retention.log")
    try:
        wait_until(lambda: not partition.exists(), 15, "the old partition to be deleted")
        ledger = ledger_from_settings(stack_env.settings)
        records = [r for r in ledger.records(f"{name}/0") if r["action"] == Action.PREDICTION_LOG_PRUNED]
        assert len(records) == 1 and records[0]["actor"] == f"server:{name}/{version}"
        details = records[0]["details"]
        assert details["partitions"] == [partition.relative_to(root).as_posix()]
        assert details["rows"] == 2 and details["files"] == 1
        assert ledger.verify().ok
        assert 'modelyard_prediction_log_pruned_partitions_total' in requests.get(
            f"{process.url}/metrics", headers=_auth(), timeout=10).text
    finally:
        assert process.stop() in GRACEFUL_EXIT
