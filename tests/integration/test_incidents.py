"""Incidents on a real stack: a real drift alert from the monitor flow opens one (in the ledger,
in `modelyard incidents`, as a Prefect event, and as a notification at a local generic webhook
and a local Microsoft Teams receiver); the next version reaching 100% of traffic resolves it
by recovery, and its MTTR is taken from those records. A killed replica opens a replica
incident that its return resolves."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from modelyard.catalog import CHAMPION, Action, Event, model_resource_id
from modelyard.cli.stack import Stack
from modelyard.ledger import ledger_from_settings
from modelyard.resources.serving_state import ServingState
from tests.support.stacks import quiet
from tests.support.waits import prefect_events, wait_until

pytestmark = pytest.mark.stack

SPECS = Path(__file__).resolve().parents[2] / "specs"
MODEL = "incident-bc"


class TeamsReceiver:
    """A local HTTPS endpoint shaped like a Teams Workflows URL (self-signed certificate; the
    URL's ``verify=no`` tells apprise not to check it): what MicrosoftTeamsWebhook POSTs."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(hours=2))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(key, hashes.SHA256()))
        self.dir = tempfile.TemporaryDirectory()
        cert_path, key_path = Path(self.dir.name) / "cert.pem", Path(self.dir.name) / "key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, "body": json.loads(body)})
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        port = self.server.server_address[1]
        self.url = (f"https://127.0.0.1:{port}/workflows/modelyardtest/triggers/manual/paths/invoke"
                    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=test-signature&verify=no")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        """Every TextBlock of every adaptive card received."""
        return [" ".join(block.get("text", "") for block in item["body"]["attachments"][0]["content"]["body"])
                for item in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.dir.cleanup()


def _spec(tmp: Path) -> Path:
    spec = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text())
    spec["name"] = MODEL
    spec["serving"] = {"strategy": "blue_green"}
    spec["validation"] = {"mostly": 0.98, "range_tolerance": 0.25}  # live rows include the holdout's
    quiet(spec)
    spec["monitoring"] |= {"min_rows": 50}
    path = tmp / f"{MODEL}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait_active(stack: Stack, version: str) -> str:
    active = ServingState(stack.settings.state_dir).wait_active(MODEL, version, 240)
    assert active is not None, ledger_from_settings(stack.settings).records()[-3:]
    return active["endpoint"]


def _send(settings, url: str, rows) -> None:
    """``rows`` as requests of up to 50 rows, once the prediction log holds every one."""
    from deployments.server.prediction_log import read_prediction_log

    before = len(read_prediction_log(settings.prediction_log_dir, MODEL))
    features = rows.drop(columns=["target"])
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(features), 50):
            part = features.iloc[start:start + 50]
            body = {"dataframe_split": {"columns": list(part.columns), "data": part.values.tolist()}}
            assert client.post(f"{url}/invocations", json=body).status_code == 200
    wait_until(lambda: len(read_prediction_log(settings.prediction_log_dir, MODEL)) >= before + len(features), 60,
               "every row in the prediction log")


def _incidents(*args: str) -> list[dict]:
    """`modelyard incidents … --json`, as a user runs it (through the command's own Typer)."""
    from modelyard.cli.incidents import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["incidents", "--model", MODEL, *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.fixture(scope="module")
def teams(stack_env: Stack):
    """The session's generic webhook plus a Teams channel for this module; the stack's own
    channels back afterwards."""
    from modelyard.automations import ensure_notifications

    receiver = TeamsReceiver()
    settings = stack_env.settings.model_copy(update={"notify_teams_url": SecretStr(receiver.url)})
    assert ensure_notifications(settings) == "teams created"
    try:
        yield receiver
    finally:
        assert ensure_notifications(stack_env.settings) == "teams disabled"
        receiver.close()


@pytest.fixture(scope="module")
def served(stack_env: Stack, tmp_path_factory) -> dict:
    from flows.pipeline import model_pipeline

    path = _spec(tmp_path_factory.mktemp("incidents"))
    version = model_pipeline(str(path))["version"]
    return {"spec": path, "version": version, "url": _wait_active(stack_env, version)}


def test_notification_channels_are_prefect_blocks_of_their_own_types(stack_env: Stack):
    from prefect import get_client

    from modelyard.automations import CHANNELS, ensure_notifications

    slack = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
    teams = "https://prod-00.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?sig=x"
    settings = stack_env.settings.model_copy(update={"notify_slack_url": SecretStr(slack),
                                                     "notify_teams_url": SecretStr(teams)})
    try:
        assert ensure_notifications(settings) == "slack created, teams created"
        assert ensure_notifications(settings) == "unchanged"
        with get_client(sync_client=True) as client:
            types = {c.name: client.read_block_document_by_name(c.block_name, slug).block_type.slug
                     for c, slug in zip(CHANNELS, ("custom-webhook", "slack-webhook", "ms-teams-webhook"), strict=True)}
            automations = {c.name: [a.name for name in (c.alert_automation, c.incident_automation)
                                    for a in client.read_automations_by_name(name)] for c in CHANNELS}
        assert types == {"webhook": "custom-webhook", "slack": "slack-webhook", "teams": "ms-teams-webhook"}
        assert all(len(names) == 2 for names in automations.values()), automations
    finally:
        assert ensure_notifications(stack_env.settings) == "slack disabled, teams disabled"
    with get_client(sync_client=True) as client:
        assert client.read_automations_by_name(CHANNELS[1].incident_automation) == []
        assert len(client.read_automations_by_name(CHANNELS[0].incident_automation)) == 1


def test_an_alert_opens_an_incident_that_the_next_version_at_100_percent_resolves(
        stack_env: Stack, served: dict, teams: TeamsReceiver, alert_receiver):
    from sklearn.datasets import load_breast_cancer

    from flows.monitor import monitor
    from modelyard.resources.registry import registry_client, set_alias

    settings = stack_env.settings
    ledger = ledger_from_settings(settings)
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    # A real shift: only the larger tumours arrive.
    shifted = frame[frame["mean_radius"] > frame["mean_radius"].quantile(0.6)].sample(350, replace=True, random_state=7)
    _send(settings, served["url"], shifted.iloc[:250])
    verdict = monitor(MODEL)
    assert [a["event"] for a in verdict["alerts"]] == [Event.DRIFT_DETECTED], verdict["alerts"]
    [incident] = [i for i in _incidents("--state", "open") if i["kind"] == "drift"]
    alert = [r for r in ledger.records(subject=f"{MODEL}/{served['version']}")
             if r["action"] == Action.MONITOR_DRIFT][-1]
    assert incident["version"] == served["version"] and incident["alert"] == Action.MONITOR_DRIFT
    assert incident["first_signal_at"] == alert["details"]["window_start"]
    assert incident["mttd_s"] > 0
    # A second drifted window while it is open opens nothing more.
    _send(settings, served["url"], shifted.iloc[250:])
    assert [a["event"] for a in monitor(MODEL)["alerts"]] == [Event.DRIFT_DETECTED]
    assert [i["id"] for i in _incidents() if i["kind"] == "drift"] == [incident["id"]]

    # The event, and both notifications, name the model, the kind and the incident.
    wait_until(lambda: prefect_events(settings, event={"name": [Event.INCIDENT_OPENED]},
                                      resource={"id": [model_resource_id(MODEL)],
                                                "labels": {"modelyard.incident": [incident["id"]]}}),
               60, "the incident event")
    webhook = wait_until(lambda: [r for r in alert_receiver.received if incident["id"] in json.dumps(r)], 60,
                         "the incident at the webhook receiver")
    assert MODEL in webhook[0]["subject"] and "drift" in webhook[0]["subject"] and "opened" in webhook[0]["subject"]
    card = wait_until(lambda: [t for t in teams.texts() if incident["id"] in t], 60,
                      "the incident at the Teams receiver")
    assert MODEL in card[0] and "drift" in card[0]

    # Recovery: a new version registered and made champion (as a retrain would) deploys itself.
    from flows.pipeline import model_pipeline

    second = model_pipeline(str(served["spec"]))["version"]
    assert second != served["version"]
    set_alias(registry_client(settings), MODEL, CHAMPION, second)
    _wait_active(stack_env, second)
    resolved = wait_until(lambda: [i for i in _incidents("--state", "resolved") if i["id"] == incident["id"]], 120,
                          "the drift incident resolved by the new version")[0]
    assert resolved["resolved_by"] == "recovery" and resolved["resolution"] == f"v{second} at 100%"
    assert resolved["recovery_version"] == second

    # MTTR from the records: opened (its record's time) → resolved (the switch the record names).
    records = [r for r in ledger.records() if r["details"].get("incident") == incident["id"]]
    assert [r["action"] for r in records] == [Action.INCIDENT_OPENED, Action.INCIDENT_RESOLVED]
    opened, closed = records
    assert closed["details"]["by"] == "recovery" and closed["details"]["recovery_version"] == second
    switched = [r for r in ledger.records(subject=f"{MODEL}/{second}") if r["action"] == Action.DEPLOY_SUCCEEDED][-1]
    switch_at = next(s["at"] for s in switched["details"]["timeline"] if s["step"] == "switched")
    assert _epoch(closed["details"]["recovered_at"]) == pytest.approx(switch_at, abs=1e-3)
    assert resolved["mttr_s"] == pytest.approx(_epoch(closed["details"]["recovered_at"]) - _epoch(opened["time"]),
                                               abs=1e-3)
    assert 0 < resolved["mttr_s"] < time.time() - _epoch(opened["time"])
    wait_until(lambda: [r for r in alert_receiver.received if incident["id"] in json.dumps(r)
                        and "resolved" in r.get("subject", "")], 60, "the resolution at the webhook receiver")


def test_a_killed_replica_opens_a_replica_incident_that_its_return_resolves(stack_env: Stack, served: dict):
    from deployments.targets.local import LocalTarget

    settings = stack_env.settings
    version = ServingState(settings.state_dir).active_version(MODEL)
    target = LocalTarget(settings)
    [replica] = target.replicas(MODEL, version)
    pid = wait_until(lambda: (info := target.supervisor.info(replica.handle)) and info.state == "RUNNING" and info.pid,
                     30, "the replica running")
    wait_until(lambda: target.endpoint(MODEL, version) is not None, 60, "the replica ready")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)

    def replica_incident() -> dict | None:
        found = [i for i in _incidents("--state", "resolved")
                 if i["kind"] == "replica" and _epoch(i["opened_at"]) >= killed_at]
        return found[0] if found else None

    incident = wait_until(replica_incident, 90, "the replica incident opened and resolved")
    assert incident["version"] == version and incident["replica"] == f"v{version} r{replica.index}"
    assert incident["resolved_by"] == "recovery" and incident["resolution"] == "replica restored"
    down = [r for r in ledger_from_settings(settings).records(subject=f"{MODEL}/{version}")
            if r["action"] == Action.SERVING_REPLICA_DOWN and r["details"]["detected_at"] >= killed_at][0]
    opened = [r for r in ledger_from_settings(settings).records() if r["details"].get("incident") == incident["id"]][0]
    # MTTD: its last answered probe (the fault came after it) → the incident opened, right after the loss.
    assert _epoch(incident["first_signal_at"]) == pytest.approx(down["details"]["last_ready_at"], abs=1e-3)
    assert incident["mttd_s"] == pytest.approx(_epoch(opened["time"]) - down["details"]["last_ready_at"], abs=1e-3)
    assert opened["seq"] > down["seq"] and opened["actor"] == "watchdog"
    assert 0 <= incident["mttd_s"] < 10, (incident, down["time"], down["details"])
    # MTTR: opened → the replica back in the route.
    assert _epoch(incident["resolved_at"]) >= _epoch(opened["time"]) and 0 < incident["mttr_s"] < 60
    assert [i for i in _incidents("--state", "open") if i["kind"] == "replica"] == []
