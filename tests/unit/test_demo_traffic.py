"""The demo's client: every request answered with a prediction id is remembered under it, and
the delayed labels go back keyed by that id — never by the client's own request id."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pandas as pd
import pytest

from modelyard.catalog import PREDICTION_ID_HEADER
from modelyard.cli.demo_traffic import LabelFeeder, TrafficGenerator
from tests.support.waits import wait_until


class _Server(BaseHTTPRequestHandler):
    """A model that answers every request with a fresh prediction id (and a 500 on request 3)."""

    answered = 0

    def log_message(self, *args) -> None:
        pass

    def _json(self, body: dict, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/version":
            self._json({"model": "m", "version": "1"})
        else:
            self._json({"inputs": [{"name": "amount"}]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).answered += 1
        n = type(self).answered
        if n == 3:
            self._json({"error": "boom"}, 500)
        else:
            self._json({"predictions": [0]}, headers={PREDICTION_ID_HEADER: f"pred-{n}"})


@pytest.fixture
def server() -> Iterator[str]:
    _Server.answered = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_traffic_remembers_the_prediction_id_of_each_answered_request(server: str):
    frame = pd.DataFrame({"amount": [1.0, 2.0], "transaction_id": ["tx-a", "tx-b"]})
    with TrafficGenerator(server, frame, rate=200, id_column="transaction_id") as traffic:
        wait_until(lambda: traffic.sent >= 6, 10, "six requests")
    assert traffic.failed == 1  # the 500 has no prediction id: nothing to label
    ids = [(request_id, prediction_id) for _, request_id, prediction_id in traffic.answered]
    assert ids[:4] == [("tx-a", "pred-1"), ("tx-b", "pred-2"), ("tx-b", "pred-4"), ("tx-a", "pred-5")]


def test_labels_are_written_by_prediction_id_after_the_delay(tmp_path):
    now = time.time()
    # The same client id twice (a row sent again): two predictions, each labelled by its own id.
    traffic = SimpleNamespace(answered=[(now - 30, "tx-a", "pred-1"), (now - 20, "tx-a", "pred-2"),
                                        (now - 20, "tx-unknown", "pred-3"), (now - 1, "tx-b", "pred-4")])
    feeder = LabelFeeder(traffic, {"tx-a": 1, "tx-b": 0}, "is_fraud", tmp_path, delay_s=15)
    feeder._flush()
    [written] = list(tmp_path.glob("labels-*.parquet"))
    labels = pd.read_parquet(written)
    assert list(labels.columns) == ["prediction_id", "is_fraud"]
    assert labels.values.tolist() == [["pred-1", 1], ["pred-2", 1]]  # pred-4 is not due yet
    assert feeder.written == 2
    feeder._flush()  # nothing new is due: no second file
    assert len(list(tmp_path.glob("labels-*.parquet"))) == 1
