"""Fuzzing a real inference server: schemathesis from its own /openapi.json with every check on,
and raw sockets (truncated bodies, invalid UTF-8, lying Content-Length, slow headers, a 100 MB
body). Expected: no answer ≥ 500, no other client held up, and the server still answers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from modelyard.cli.stack import Stack
from tests.support.servers import ServerProcess, start_server
from tests.support.stacks import quiet

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"
TOKEN = "fuzz-token-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _train(spec: dict, folder: Path) -> str:
    from flows.pipeline import model_pipeline

    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(quiet(spec)))
    outcome = model_pipeline(str(path))
    assert outcome["passed"], outcome
    return f"models:/{spec['name']}/{outcome['version']}"


@pytest.fixture(scope="module")
def models(stack_env: Stack, tmp_path_factory) -> dict[str, str]:
    """The demo's kind of model (an ONNX classifier of numbers and categories) and a regression
    trained on a public dataset with gaps (pyfunc, a column that takes null)."""
    from tasks.data import load_sklearn_dataset

    folder = tmp_path_factory.mktemp("fuzz-models")
    fraud = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    fraud.update(name="fuzz-fraud", policy={"min_metrics": {"roc_auc": 0.6}},
                 estimator={"kind": "gradient_boosting", "params": {"n_estimators": 20, "max_depth": 3}})
    fraud["data"]["generator_params"] = {"n_rows": 3000, "seed": 5}
    frame = load_sklearn_dataset("diabetes")
    frame.loc[frame.index % 5 == 0, "bmi"] = np.nan
    frame.to_parquet(folder / "gaps.parquet", index=False)
    gaps = yaml.safe_load((SPECS / "diabetes.yaml").read_text())
    gaps.update(name="fuzz-gaps", policy={"min_metrics": {"r2": 0.1}},
                estimator={"kind": "hist_gradient_boosting", "params": {"max_iter": 20}})
    gaps["data"]["source"] = str(folder / "gaps.parquet")
    return {"onnx": _train(fraud, folder), "gaps": _train(gaps, folder)}


@pytest.fixture(scope="module")
def servers(stack_env: Stack, models, tmp_path_factory):
    env = stack_env.settings.child_env() | {"MODELYARD_API_TOKEN": TOKEN}
    folder = tmp_path_factory.mktemp("fuzz-servers")
    started = {kind: start_server(uri, env, folder / f"{kind}.log") for kind, uri in models.items()}
    yield started
    for process in started.values():
        process.stop()


def _schemathesis(url: str, max_examples: int, seed: int, report_dir: Path) -> dict:
    """One schemathesis run, every check on. One worker: its parallel workers sometimes crash
    in CPython's AST compiler (a schemathesis internal error, not a finding). The coverage phase
    alone makes thousands of cases (every keyword of every column, positive and negative)."""
    report_dir.mkdir(parents=True)
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
               "--header", f"Authorization: Bearer {TOKEN}", "--checks", "all",
               "--phases", "examples,coverage,fuzzing", "--max-examples", str(max_examples), "--seed", str(seed),
               "--workers", "1", "--no-color", "--report", "json", "--report-dir", str(report_dir)]
    # In the report folder: schemathesis keeps a cache of crashes in its working directory.
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=report_dir)
    report = json.loads(next(report_dir.glob("*.json")).read_text())
    return {"report": report, "output": finished.stdout[-6000:] + finished.stderr[-2000:]}


def test_schemathesis_finds_no_server_error_and_no_contract_mismatch(servers, tmp_path):
    generated = 0
    for index, (kind, process) in enumerate(sorted(servers.items())):
        run = _schemathesis(process.url, 5, 12 + index, tmp_path / kind)
        report = run["report"]
        assert report["operations"]["tested"] >= 14, run["output"]
        assert report["test_cases"]["with_failures"] == 0 and report["exit_code"] == 0, run["output"]
        generated += report["test_cases"]["generated"]
    assert generated >= 1000
    for process in servers.values():
        assert requests.get(f"{process.url}/v2/health/ready", timeout=5).status_code == 200


# -- raw sockets ---------------------------------------------------------------------------------


def _statuses(data: bytes) -> list[int]:
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def _exchange(port: int, payload: bytes, half_close: bool = True, timeout: float = 5) -> list[int]:
    """Send raw bytes, read until the server closes or goes quiet; the statuses it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return _statuses(data)


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", f"Authorization: Bearer {TOKEN}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


RAW_CASES = {
    "truncated body": _head("POST", "/invocations", "Content-Type: application/json", "Content-Length: 400")
    + b'{"dataframe_split": {"columns": ["amount"',
    "truncated JSON": _head("POST", "/invocations", "Content-Type: application/json", "Content-Length: 22")
    + b'{"dataframe_records": ',
    "truncated headers": b"POST /invocations HTTP/1.1\r\nHost: fuzz\r\nContent-Ty",
    "invalid UTF-8 in JSON": _head("POST", "/invocations", "Content-Type: application/json", "Content-Length: 8")
    + b'{"\xff\xfe": 1}',
    "invalid UTF-8 in CSV": _head("POST", "/invocations", "Content-Type: text/csv", "Content-Length: 9")
    + b"amount\n\xff\xfe\n",
    "invalid UTF-8 in v2": _head("POST", "/v2/models/NAME/infer", "Content-Type: application/json",
                                 "Content-Length: 14") + b'{"inputs": "\xc3"}',
    "invalid UTF-8 in the path": b"GET /v2/models/\xff\xfe HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    "invalid UTF-8 in a header": _head("GET", "/version").replace(b"Host: fuzz", b"Host: fuzz\r\nX-Request-ID: \xff\xfe"),
    "Content-Length longer than the body": _head("POST", "/invocations", "Content-Type: application/json",
                                                  "Content-Length: 5000") + b'{"dataframe_records": []}',
    "Content-Length shorter than the body": _head("POST", "/invocations", "Content-Type: application/json",
                                                   "Content-Length: 7") + b'{"dataframe_records": [{"amount": 1}]}',
    "two Content-Lengths": _head("POST", "/invocations", "Content-Type: application/json", "Content-Length: 2",
                                 "Content-Length: 3") + b"{}",
    "negative Content-Length": _head("POST", "/invocations", "Content-Type: application/json", "Content-Length: -2")
    + b"{}",
    "giant Content-Length": _head("POST", "/invocations", "Content-Type: application/json",
                                  "Content-Length: 99999999999999999999999") + b"{}",
    "bad chunk size": _head("POST", "/invocations", "Content-Type: application/json", "Transfer-Encoding: chunked")
    + b"zz\r\n{}\r\n0\r\n\r\n",
    "not HTTP": b"\x00\x01\x02\x16\x03\x01 hello\r\n\r\n",
    "deep JSON": _head("POST", "/invocations", "Content-Type: application/json", "Content-Length: 200000")
    + b"[" * 200000,
}


class Prober:
    """A well-behaved client in the background: every request must succeed, none may wait."""

    def __init__(self, url: str, body: dict) -> None:
        self.url, self.body = url, body
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(f"{self.url}/invocations", json=self.body, headers=AUTH, timeout=5)
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                except requests.RequestException as error:
                    self.failures.append(repr(error))
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _example(process: ServerProcess) -> dict:
    """A valid body for the served model, made from its OpenAPI document's columns."""
    document = requests.get(f"{process.url}/openapi.json", headers=AUTH, timeout=5).json()
    body = document["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    record = next(o for o in body["oneOf"] if "dataframe_records" in o["required"])["properties"]["dataframe_records"]
    columns = record["items"]["properties"]
    return {"dataframe_records": [{name: ("a" if "string" in schema["type"] else 1.5) for name, schema in columns.items()}]}


def _slow_headers(port: int, seconds: float) -> list[int]:
    """A slowloris client: a valid request whose headers trickle in a byte at a time."""
    request = _head("GET", "/v2/health/ready")
    pause = seconds / len(request)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for byte in request:
            sock.sendall(bytes([byte]))
            time.sleep(pause)
        return _statuses(sock.recv(65536))


def _hundred_megabytes(port: int, chunked: bool) -> list[int]:
    """A 100 MB body, as one Content-Length or chunked: the server answers 413 once past its limit."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {100 * 2**20}"
    block = b"[" * 2**20
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(_head("POST", "/invocations", "Content-Type: application/json", framing))
        try:
            for _ in range(100):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server may close once it has answered
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
        except OSError:
            pass
    return _statuses(data)


def test_raw_socket_fuzz_gets_no_server_error_and_holds_no_client_up(servers):
    process = servers["onnx"]
    port = int(process.url.rsplit(":", 1)[1])
    name = requests.get(f"{process.url}/version", headers=AUTH, timeout=5).json()["model"]
    cases = {case: payload.replace(b"NAME", name.encode()) for case, payload in RAW_CASES.items()}
    answered: dict[str, list[int]] = {}
    with Prober(process.url, _example(process)) as prober:
        with ThreadPoolExecutor(8) as pool:
            # Slow clients first: they hold their connections while everything else runs.
            slow = [pool.submit(_slow_headers, port, 3.0) for _ in range(4)]
            stalled = pool.submit(_exchange, port, cases["Content-Length longer than the body"], False, 3.0)
            big = {chunked: pool.submit(_hundred_megabytes, port, chunked) for chunked in (False, True)}
            quick = {case: pool.submit(_exchange, port, payload) for case, payload in cases.items()}
            for case, future in quick.items():
                answered[case] = future.result(timeout=60)
            answered["stalled body"] = stalled.result(timeout=60)
            answered["slow headers"] = [status for future in slow for status in future.result(timeout=60)]
            answered["100 MB"] = big[False].result(timeout=120)
            answered["100 MB chunked"] = big[True].result(timeout=120)
    assert not [case for case, statuses in answered.items() if any(status >= 500 for status in statuses)], answered
    assert answered["slow headers"] == [200] * 4
    assert answered["100 MB"] == [413] and answered["100 MB chunked"] == [413]
    assert answered["invalid UTF-8 in JSON"] == [400] and answered["deep JSON"] == [400]
    assert not prober.failures, prober.failures[:5]
    assert len(prober.latencies) > 20 and max(prober.latencies) < 2.0, max(prober.latencies)
    # The server still answers, and counted no internal error.
    response = requests.post(f"{process.url}/invocations", json=_example(process), headers=AUTH, timeout=5)
    assert response.status_code == 200
    metrics = requests.get(f"{process.url}/metrics", headers=AUTH, timeout=5).text
    assert 'kind="internal"' not in metrics and 'status="5' not in metrics
