"""The registry → Prefect event bridge: MLflow's own signed deliveries get through, forged,
replayed, duplicated and badly named ones do not; a delivery is done only once Prefect accepted
its event; a flood of refused posts is counted, not written to the ledger post by post
(tests/integration/test_registry_bridge.py: the same on the real stack)."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from deployments.bridge import (
    BridgeApp, EmitFailed, Rejections, SeenDeliveries, WebhookRejected, WebhookVerifier, emit_prefect_event,
    prefect_event,
)
from modelyard.catalog import WEBHOOK_PATH, Action
from tests.support.deliveries import signed_delivery

SECRET = "s3cret-for-tests"


def _delivery(secret: str = SECRET, age_s: int = 0, **kwargs):
    return signed_delivery(secret, age_s, **kwargs)


class Clock:
    """A monotonic clock the test moves by hand (the rate limiter's and the summary's time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Bridge:
    """A bridge with its ledger appends and its emitted events kept in lists."""

    def __init__(self, tmp_path, emit=None, clock: Clock | None = None) -> None:
        self.records: list[tuple[str, str, dict]] = []
        self.emitted: list[dict] = []
        self.clock = clock or Clock()
        self.seen = SeenDeliveries(tmp_path / "seen.sqlite")
        audit = lambda action, subject, details: self.records.append((str(action), subject, details))  # noqa: E731
        self.app = BridgeApp(WebhookVerifier(SECRET, self.seen), emit or self.emitted.append, audit,
                             rejections=Rejections(lambda s: audit(Action.WEBHOOK_REJECTED, "registry-bridge", s),
                                                   clock=self.clock))

    def actions(self, action: Action) -> list[dict]:
        return [details for recorded, _, details in self.records if recorded == action]


@pytest.fixture
def verifier(tmp_path) -> WebhookVerifier:
    return WebhookVerifier(SECRET, SeenDeliveries(tmp_path / "seen.sqlite"))


def test_mlflow_signed_delivery_becomes_a_prefect_event_naming_model_and_version(verifier):
    delivery = verifier.verify(*_delivery())
    event = prefect_event(delivery)
    assert event["event"] == "modelyard.registry.model_version_alias.created"
    assert event["resource"]["prefect.resource.id"] == "mlflow.model.fraud.version.3"
    assert event["resource"]["mlflow.alias"] == "champion"
    assert event["related"][0]["prefect.resource.id"] == "mlflow.model.fraud"


def test_every_retry_of_a_delivery_carries_the_same_event_id(verifier):
    """Prefect's triggers act once per event id: a retry that emits again deploys nothing twice."""
    headers, body = _delivery()
    first, again = prefect_event(verifier.verify(headers, body)), prefect_event(verifier.verify(headers, body))
    other = prefect_event(verifier.verify(*_delivery()))
    assert first["id"] == again["id"] != other["id"]


@pytest.mark.parametrize("tamper", ["wrong secret", "edited body", "no signature"])
def test_bad_signature_is_refused(verifier, tamper):
    headers, body = _delivery(secret="other" if tamper == "wrong secret" else SECRET)
    if tamper == "edited body":
        body = body.replace(b'"3"', b'"4"')
    if tamper == "no signature":
        headers.pop("x-mlflow-signature")
    with pytest.raises(WebhookRejected) as rejected:
        verifier.verify(headers, body)
    assert rejected.value.status == 401


def test_replay_older_than_five_minutes_is_refused(verifier):
    with pytest.raises(WebhookRejected) as rejected:
        verifier.verify(*_delivery(age_s=301))
    assert rejected.value.status == 401 and "older than 300 s" in rejected.value.reason


def test_repeated_delivery_id_is_refused_even_after_a_restart(tmp_path):
    headers, body = _delivery()
    assert Bridge(tmp_path).app.deliver(headers, body).status == 202
    restarted = Bridge(tmp_path)
    answer = restarted.app.deliver(headers, body)
    assert answer.status == 409 and restarted.emitted == []


# --- emit before claim ------------------------------------------------------------------------

class RefusedOnce:
    """An emit that fails the first time (as a Prefect server that is down would), then works."""

    def __init__(self) -> None:
        self.calls = 0
        self.accepted: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.calls += 1
        if self.calls == 1:
            raise httpx.ConnectError("All connection attempts failed")
        self.accepted.append(event)


def test_failed_emit_answers_503_records_nothing_and_the_retry_emits(tmp_path):
    emit = RefusedOnce()
    bridge = Bridge(tmp_path, emit=emit)
    headers, body = _delivery()
    delivery_id = headers["x-mlflow-delivery-id"]

    failed = bridge.app.deliver(headers, body)
    assert (failed.status, failed.retry_after) == (503, 1)  # MLflow retries 429/5xx, honouring Retry-After
    assert not bridge.seen.done(delivery_id) and not bridge.seen.in_flight(delivery_id, bridge.app.verifier.clock())
    assert bridge.actions(Action.REGISTRY_EVENT_EMITTED) == []

    retried = bridge.app.deliver(headers, body)  # MLflow's retry: the same delivery id, signature, timestamp
    assert retried.status == 202 and len(emit.accepted) == 1
    assert bridge.seen.done(delivery_id)
    assert [d["delivery_id"] for d in bridge.actions(Action.REGISTRY_EVENT_EMITTED)] == [delivery_id]
    assert bridge.app.deliver(headers, body).status == 409 and len(emit.accepted) == 1
    assert bridge.app.health()["deliveries"] == {"emit_failed": 1, "emitted": 1, "in_flight": 0}


class HeldEmit:
    """An emit that waits until the test lets it finish (or fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.started, self.release, self.fail = threading.Event(), threading.Event(), fail
        self.accepted: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.started.set()
        assert self.release.wait(10)
        if self.fail:
            raise httpx.ReadTimeout("Prefect did not answer")
        self.accepted.append(event)


def _deliver_in_thread(app: BridgeApp, headers, body) -> tuple[threading.Thread, list]:
    answers: list = []
    thread = threading.Thread(target=lambda: answers.append(app.deliver(headers, body)))
    thread.start()
    return thread, answers


@pytest.mark.parametrize("first_emit_fails", [False, True])
def test_duplicate_arriving_while_the_first_is_emitted_does_not_emit_twice(tmp_path, first_emit_fails):
    emit = HeldEmit(fail=first_emit_fails)
    bridge = Bridge(tmp_path, emit=emit)
    headers, body = _delivery()
    thread, first = _deliver_in_thread(bridge.app, headers, body)
    assert emit.started.wait(10)
    duplicate = bridge.app.deliver(headers, body)
    assert (duplicate.status, duplicate.retry_after) == (503, 1)  # retried later, when the first is settled
    emit.release.set()
    thread.join(10)
    assert first[0].status == (503 if first_emit_fails else 202)
    assert len(emit.accepted) == (0 if first_emit_fails else 1)
    if first_emit_fails:  # the marker is released: the next delivery of the same id is emitted
        emit.fail = False
        assert bridge.app.deliver(headers, body).status == 202 and len(emit.accepted) == 1
    assert bridge.app.health()["rejected"] == {"in_progress": 1}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_emit_waits_for_prefect_and_raises_when_prefect_refuses():
    """Not fire-and-forget: a Prefect API nobody answers on makes the emit itself fail."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    event = {"event": "modelyard.registry.model_version.created", "resource": {"prefect.resource.id": "x"}}
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{_closed_port()}/api"}), \
            pytest.raises(httpx.ConnectError):
        emit_prefect_event(event, timeout_s=2)
    with temporary_settings({PREFECT_API_URL: ""}), pytest.raises(EmitFailed, match="PREFECT_API_URL"):
        emit_prefect_event(event)


# --- refused posts: counted, summarised, rate limited ------------------------------------------

def _bad_post(i: int):
    kind = i % 4
    if kind == 0:
        return _delivery(secret="not-the-secret")
    if kind == 1:
        return _delivery(age_s=3600)
    if kind == 2:
        headers, body = _delivery()
        headers.pop("x-mlflow-signature")
        return headers, body
    return {"content-type": "application/json"}, b"\xff\xfe not json"


def test_a_flood_of_refused_posts_is_counted_not_appended_one_by_one(tmp_path):
    bridge = Bridge(tmp_path)
    statuses = [bridge.app.deliver(*_bad_post(i)).status for i in range(10_000)]
    assert statuses[:20] == [401, 401, 401, 401] * 5  # the burst gets its own answer
    assert set(statuses[20:]) == {429}  # then: back off
    summaries = bridge.actions(Action.WEBHOOK_REJECTED)
    assert len(summaries) == 1 and summaries[0]["counts"] == {"bad_signature": 1}  # the first, at once

    # A delivery MLflow signed still gets through, in the middle of the flood.
    assert bridge.app.deliver(*_delivery()).status == 202 and len(bridge.emitted) == 1

    health = bridge.app.health()
    assert health["rejected"] == {"bad_signature": 2500, "stale": 2500, "missing_headers": 5000}
    assert health["rate_limited"] == 10_000 - 20
    bridge.clock.now += 60  # the interval has passed: the periodic flush writes the rest, once
    bridge.app.rejections.flush()
    bridge.app.rejections.flush()
    summaries = bridge.actions(Action.WEBHOOK_REJECTED)
    assert len(summaries) == 2
    assert summaries[1]["total"] == 9_999 and summaries[1]["rate_limited"] == 9_980
    assert summaries[1]["first"] <= summaries[1]["last"]
    assert len(bridge.records) == 3  # two summaries and the one emitted delivery


def test_the_rate_limit_refills_and_a_quiet_bridge_answers_each_refusal_again(tmp_path):
    bridge = Bridge(tmp_path)
    assert [bridge.app.deliver(*_bad_post(0)).status for _ in range(21)][-1] == 429
    bridge.clock.now += 5
    assert [bridge.app.deliver(*_bad_post(0)).status for _ in range(6)] == [401] * 5 + [429]


def test_refused_posts_over_http_get_429_with_retry_after_and_show_in_health(tmp_path):
    bridge = Bridge(tmp_path)

    async def run() -> tuple[list[httpx.Response], dict]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bridge.app), base_url="http://bridge") as client:
            answers = []
            for _ in range(25):
                headers, body = _delivery(secret="forged")
                answers.append(await client.post(WEBHOOK_PATH, headers=headers, content=body))
            answers.append(await client.get("/nowhere"))
            good_headers, good_body = _delivery()
            answers.append(await client.post(WEBHOOK_PATH, headers=good_headers, content=good_body))
            return answers, (await client.get("/health")).json()

    answers, health = asyncio.run(run())
    assert [a.status_code for a in answers[:20]] == [401] * 20
    assert {a.status_code for a in answers[20:26]} == {429} and answers[20].headers["retry-after"] == "1"
    assert answers[26].status_code == 202 and len(bridge.emitted) == 1
    assert health["rejected"] == {"bad_signature": 25, "no_route": 1} and health["rate_limited"] == 6
    assert health["deliveries"]["emitted"] == 1


# --- names from the payload -------------------------------------------------------------------

@pytest.mark.parametrize(("data", "field"), [
    ({"name": "../../etc", "alias": "champion", "version": "3"}, "data.name"),
    ({"name": "fraud\nserver { listen 80; }", "alias": "champion", "version": "3"}, "data.name"),
    ({"name": "a" * 65, "alias": "champion", "version": "3"}, "data.name"),
    ({"name": "fraud", "alias": "champion", "version": "3; rm -rf /"}, "data.version"),
    ({"name": "fraud", "alias": "champion", "version": "0"}, "data.version"),
    ({"name": "fraud", "alias": "champion"}, "data.version"),
    ({"name": "fraud", "alias": "cham pion", "version": "3"}, "data.alias"),
])
def test_a_signed_delivery_with_an_invalid_name_is_refused_naming_the_field_and_recorded_once(tmp_path, data, field):
    bridge = Bridge(tmp_path)
    headers, body = _delivery(data=data)
    answer = bridge.app.deliver(headers, body)
    assert answer.status == 400 and answer.body["error"].startswith(f"{field}: ")
    assert bridge.emitted == []
    assert bridge.app.deliver(headers, body).status == 409  # a replay is a duplicate: counted, not recorded again
    refused = bridge.actions(Action.REGISTRY_WEBHOOK_REJECTED)
    assert [(r["code"], r["delivery_id"]) for r in refused] == [("invalid_name", headers["x-mlflow-delivery-id"])]
    assert bridge.app.health()["rejected"] == {"invalid_name": 1, "duplicate": 1}


def test_version_created_event_names_are_checked_too(tmp_path):
    bridge = Bridge(tmp_path)
    ok = _delivery(entity="model_version", data={"name": "fraud.v2", "version": "12"})
    bad = _delivery(entity="model_version", data={"name": "fraud/../x", "version": "12"})
    assert bridge.app.deliver(*ok).status == 202
    assert bridge.app.deliver(*bad).status == 400
    assert [e["resource"]["mlflow.model"] for e in bridge.emitted] == ["fraud.v2"]


# --- names from Prefect events, in the flows they start -----------------------------------------

@pytest.mark.parametrize(("names", "field"), [
    ({"model": "../../etc/passwd", "version": "3"}, "model"),
    ({"model": "fraud", "version": "3/../../x"}, "version"),
    ({"model": "fraud", "to_version": "latest"}, "to_version"),
    ({"model": "a b"}, "model"),
])
def test_a_flow_started_with_an_invalid_name_is_refused_and_recorded_once(names, field):
    from modelyard.names import InvalidName
    from tasks.deploying import refuse_invalid_names

    records = []
    with pytest.raises(InvalidName, match=f"^{field}: "):
        refuse_invalid_names("deploy", names, lambda *record: records.append(record))
    assert [(action, subject, details["field"]) for action, subject, details in records] == \
        [(Action.NAME_REFUSED, "deploy", field)]


def test_valid_names_and_an_absent_optional_version_pass_without_a_record():
    from tasks.deploying import refuse_invalid_names

    records = []
    refuse_invalid_names("rollback", {"model": "fraud.v2", "to_version": None}, lambda *r: records.append(r))
    refuse_invalid_names("deploy", {"model": "bc", "version": "12"}, lambda *r: records.append(r))
    assert records == []


NAME_PARAMETERS = {"model", "version", "to_version"}


def _first_call(function) -> tuple[str, set[str]] | None:
    """The function called by the flow's first statement after its docstring and local imports,
    and the keys of the dict literal it is given."""
    import ast

    for statement in function.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom)) or (
                isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)):
            continue
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            return None
        keys = {k.value for arg in call.args if isinstance(arg, ast.Dict) for k in arg.keys}
        return call.func.id, keys
    return None


def test_every_flow_prefect_yaml_starts_checks_the_names_it_was_given_first():
    """deploy, rollback, retrain, monitor: parameters that anyone able to emit an event chooses."""
    import ast
    from pathlib import Path

    import yaml

    project = Path(__file__).resolve().parents[2]
    checked = {}
    for deployment in yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        function = next(node for node in ast.parse((project / path).read_text()).body
                        if isinstance(node, ast.FunctionDef) and node.name == name)
        parameters = {a.arg for a in function.args.args} & NAME_PARAMETERS
        if parameters:
            checked[name] = (_first_call(function), parameters)
    assert set(checked) >= {"deploy", "rollback", "retrain", "monitor"}
    assert {name: call for name, (call, parameters) in checked.items()
            if call is None or call[0] != "check_names" or call[1] != parameters} == {}
