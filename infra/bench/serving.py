"""Serving benchmark: modelyard's server against `mlflow models serve` on the same registered
model, and a bare ASGI app as the ceiling, each under wrk (8 connections, single-row JSON).

Run with `make bench-serving`; writes docs/benchmarks/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from modelyard.settings import Settings  # noqa: E402
from modelyard.cli.stack import Stack  # noqa: E402

SPEC = ROOT / "specs" / "bench_rf100.yaml"
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registered_version(settings: Settings) -> str:
    """The champion of bench-rf100, training it through the model pipeline if needed."""
    from prefect.settings import temporary_settings

    from modelyard.catalog import CHAMPION
    from modelyard.resources.registry import alias_version, registry_client

    version = alias_version(registry_client(settings), "bench-rf100", CHAMPION)
    if version is None:
        with temporary_settings(settings.prefect_client_settings()):
            from flows.pipeline import model_pipeline

            version = model_pipeline(str(SPEC))["version"]
    return version


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def run_wrk(url: str, body: str, seconds: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(body)}\n"
                     "local errors = 0\n"
                     "response = function(status, headers, body) if status ~= 200 then errors = errors + 1 end end\n")
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return {"rps": rps, "p50_ms": latency_ms("50"), "p99_ms": latency_ms("99"), "errors": errors, "requests": total}


def start_stack() -> Settings:
    """The stack of this checkout's settings, up (started where it is not), with this process
    and its children pointed at it (MODELYARD_*, its MLflow and its Prefect API, with their
    credentials: the MLflow service identity, the Prefect API's auth string)."""
    settings = Settings()
    print("bringing the stack up …", flush=True)
    Stack(settings, progress=lambda m: print(f"  {m}", flush=True)).up()
    os.environ.update(settings.child_env() | settings.prefect_client_env())
    return settings


def bench_arguments(report: str, **defaults: int) -> argparse.Namespace:
    """A benchmark's command line: its integer options with their defaults, and where the report goes."""
    parser = argparse.ArgumentParser()
    for name, default in defaults.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / report))
    return parser.parse_args()


def one_row_body() -> str:
    """One breast-cancer row in MLflow's ``dataframe_split`` form: the request every run sends."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    row = frame.iloc[[0]]
    return json.dumps({"dataframe_split": {"columns": list(row.columns), "data": row.values.tolist()}})


def main() -> None:
    args = bench_arguments("serving.md", seconds=20, connections=8)
    settings = start_stack()
    version = registered_version(settings)
    model_uri = f"models:/bench-rf100/{version}"
    print(f"model {model_uri}", flush=True)
    body = one_row_body()

    env = {**os.environ, "MODELYARD_SERVE_ANONYMOUS": "true", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("MODELYARD_API_TOKEN", None)
    servers = {}
    ports = {name: free_port() for name in ("modelyard", "modelyard-sampled", "modelyard-nolog", "mlflow", "bare-uvicorn", "bare-granian")}
    commands = {
        "modelyard": [str(BIN / "modelyard"), "serve", model_uri, "--port", str(ports["modelyard"])],
        "modelyard-sampled": [str(BIN / "modelyard"), "serve", model_uri, "--port", str(ports["modelyard-sampled"])],
        "modelyard-nolog": [str(BIN / "modelyard"), "serve", model_uri, "--port", str(ports["modelyard-nolog"]), "--no-log"],
        "mlflow": [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                   "--host", "127.0.0.1", "--port", str(ports["mlflow"])],
        "bare-uvicorn": [str(BIN / "uvicorn"), "bare_asgi:app", "--host", "127.0.0.1", "--port", str(ports["bare-uvicorn"]),
                         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        "bare-granian": [str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                         "--port", str(ports["bare-granian"]), "--workers", "1", "--log-level", "warning", "bare_asgi:app"],
    }
    health = {"modelyard": "/v2/health/ready", "modelyard-sampled": "/v2/health/ready", "modelyard-nolog": "/v2/health/ready", "mlflow": "/ping", "bare-uvicorn": "/", "bare-granian": "/"}
    results = {}
    try:
        for name, command in commands.items():
            print(f"starting {name} …", flush=True)
            server_env = env | ({"MODELYARD_PREDICTION_LOG_SAMPLE_RATE": "0.1"} if name == "modelyard-sampled" else {})
            servers[name] = subprocess.Popen(command, env=server_env, cwd=Path(__file__).parent,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            base = f"http://127.0.0.1:{ports[name]}"
            if name.startswith("bare"):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        requests.post(base, data="{}", timeout=1)
                        break
                    except requests.ConnectionError:
                        time.sleep(0.2)
            else:
                wait_ready(base + health[name], servers[name])
            url = base + ("/invocations" if not name.startswith("bare") else "/")
            answer = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert answer.status_code == 200, (name, answer.text)
            print(f"  {name} answers {answer.text.strip()[:60]}; wrk {args.seconds} s …", flush=True)
            requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
            results[name] = run_wrk(url, body, args.seconds, args.connections)
            print(f"  {results[name]}", flush=True)
            servers[name].terminate()
            servers[name].wait(timeout=60)
    finally:
        for process in servers.values():
            if process.poll() is None:
                process.kill()
    write_report(Path(args.out), results, model_uri, args)


def write_report(path: Path, results: dict, model_uri: str, args) -> None:
    modelyard, mlflow_result = results["modelyard"], results["mlflow"]
    ceiling = max(results["bare-uvicorn"]["rps"], results["bare-granian"]["rps"])
    lines = [
        "# Serving benchmark",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} cores "
        f"({platform.machine()}, Python {platform.python_version()}), by `make bench-serving`.",
        "",
        f"The same registered model ({model_uri}: RandomForest, 100 trees, 30 features), one JSON row per "
        f"request (`dataframe_split`), wrk with {args.connections} connections for {args.seconds} s each, "
        "servers one after another on the same machine, wrk sharing its cores.",
        "",
        "| server | req/s | p50 ms | p99 ms | errors | requests |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"modelyard": "modelyard serve (ONNX Runtime, micro-batching, prediction log on, every request)",
              "modelyard-sampled": "modelyard serve, prediction log sampling 10% (MODELYARD_PREDICTION_LOG_SAMPLE_RATE=0.1)",
              "modelyard-nolog": "modelyard serve --no-log",
              "mlflow": "mlflow models serve --env-manager local",
              "bare-uvicorn": "bare ASGI constant, uvicorn + uvloop + httptools (modelyard's stack)",
              "bare-granian": "bare ASGI constant, granian"}
    for name, result in results.items():
        lines.append(f"| {labels[name]} | {result['rps']:,.0f} | {result['p50_ms']:.2f} | {result['p99_ms']:.2f} | "
                     f"{result['errors']} | {result['requests']:,} |")
    lines += [
        "",
        f"- modelyard / MLflow throughput: **{modelyard['rps'] / mlflow_result['rps']:.1f}×** (target ≥ 50×)",
        f"- modelyard p99: **{modelyard['p99_ms']:.2f} ms** (target ≤ 10 ms); MLflow p99 {mlflow_result['p99_ms']:.2f} ms",
        f"- without the prediction log: {results['modelyard-nolog']['rps']:,.0f} req/s, p99 "
        f"{results['modelyard-nolog']['p99_ms']:.2f} ms, {results['modelyard-nolog']['rps'] / mlflow_result['rps']:.1f}× MLflow, "
        f"{results['modelyard-nolog']['rps'] / results['bare-uvicorn']['rps']:.0%} of the bare app",
        f"- modelyard / bare ceiling: **{modelyard['rps'] / results['bare-uvicorn']['rps']:.0%}** of the bare app on the "
        f"same server stack (target ≥ 30%); {modelyard['rps'] / ceiling:.0%} of the fastest bare app measured",
        "",
        "Reproduce: `make bench-serving` (starts the stack, trains `specs/bench_rf100.yaml` if it is not registered).",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
