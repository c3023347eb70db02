"""The pure parts of supervised, replicated serving: supervisord's configuration, slots spread
over replicas, the router's retries and trace header, the watchdog's verdicts, the spec's
replica count — no processes (real ones: tests/integration/test_self_healing.py)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from deployments.targets.base import Endpoint, Replica
from deployments.traffic.nginx import SLOTS, live_replicas, render_model_conf, slot_layout, spread_replicas
from deployments.watchdog import FAILURES_TO_DOWN, Outcome, Watch, assess, down_record, restored_record
from modelyard.catalog import TRACE_HEADER
from modelyard.group_reaper import orphan_group
from modelyard.processes import Program, render_program, render_supervisord_conf
from modelyard.resources.inference import MetricsSnapshot, merge_snapshots
from modelyard.spec import SpecError, parse_spec

BASE = {"name": "m", "team": "t", "task": "regression", "data": {"source": "x.csv", "target": "y"}, "metrics": {"primary": "rmse"},
        "policy": {"allow_any": True}}


def _ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def test_program_file_restarts_with_back_off_logs_as_before_and_escapes_what_supervisord_expands():
    program = Program("serve-fraud-v3-r1", ["/venv/bin/python", "-m", "modelyard.cli", "serve", "models:/fraud/3",
                                            "--uds", "/state dir/sock/x.sock", "--tag", "50%"],
                      Path("/project"), {"PATH": "/venv/bin"}, priority=900, startsecs=5)
    section = _ini(render_program(program, Path("/state/logs/serve-fraud-v3-r1.log")))["program:serve-fraud-v3-r1"]
    assert section["autorestart"] == "true" and section["startsecs"] == "5" and int(section["startretries"]) >= 3
    assert section["stopasgroup"] == section["killasgroup"] == "true"
    assert section["stdout_logfile"] == "/state/logs/serve-fraud-v3-r1.log" and section["redirect_stderr"] == "true"
    # supervisord expands %(…)s, then splits the command like a POSIX shell.
    assert shlex.split(section["command"] % {}) == list(program.command)
    assert section["environment"] % {} == 'PATH="/venv/bin"'


def test_program_files_refuse_what_supervisord_cannot_carry():
    with pytest.raises(ValueError, match="cannot name"):
        render_program(Program("a:b", ["x"], Path("/")), Path("/l"))
    with pytest.raises(ValueError, match="environment line"):  # secrets stay in supervisord's own environment
        render_program(Program("a", ["x"], Path("/"), {"TOKEN": 'has"quote'}), Path("/l"))


def test_supervisord_listens_on_an_owner_only_socket_and_includes_one_file_per_program(tmp_path):
    conf = _ini(render_supervisord_conf(tmp_path / "s.sock", tmp_path / "pid", tmp_path / "log", tmp_path / "programs",
                                        tmp_path))
    assert conf["unix_http_server"]["file"] == str(tmp_path / "s.sock")
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["include"]["files"] == f"{tmp_path / 'programs'}/*.conf"
    assert "inet_http_server" not in conf  # no TCP port: XML-RPC on the unix socket only
    assert conf["rpcinterface:supervisor"]["supervisor.rpcinterface_factory"].endswith("make_main_rpcinterface")
    # The group reaper listens for exits of any program's main process.
    reaper = conf["eventlistener:group-reaper"]
    assert reaper["events"] == "PROCESS_STATE_EXITED"
    assert shlex.split(reaper["command"])[1:] == ["-m", "modelyard.group_reaper"]


def test_the_group_reaper_kills_the_group_of_an_exited_main_process_only():
    assert orphan_group("PROCESS_STATE_EXITED", {"processname": "mlflow-server", "pid": "4242"}) == 4242
    assert orphan_group("PROCESS_STATE_STOPPED", {"pid": "4242"}) is None  # stopped by supervisord: group already killed
    assert orphan_group("PROCESS_STATE_EXITED", {"pid": ""}) is None
    assert orphan_group("PROCESS_STATE_EXITED", {"pid": "1"}) is None  # never init's group


@pytest.mark.parametrize("canary", [0, 10, 25, 50])
def test_each_version_slots_alternate_over_its_replicas(canary: int):
    weights = {"1": 100 - canary, "2": canary} if canary else {"1": 100}
    layout = slot_layout(weights)
    sockets = spread_replicas(layout, {"1": ["a", "b"], "2": ["c", "d"]})
    assert len(sockets) == SLOTS
    old = [s for s, v in zip(sockets, layout, strict=True) if v == "1"]
    assert sorted(set(old)) == ["a", "b"] and abs(old.count("a") - old.count("b")) <= 1
    assert all(x != y for x, y in zip(old, old[1:], strict=False))  # a retry moves to the other replica
    new = [s for s, v in zip(sockets, layout, strict=True) if v == "2"]
    assert len(new) == round(canary * SLOTS / 100) and set(new) <= {"c", "d"}


def test_a_down_replica_gets_no_slot_until_every_replica_of_its_version_is_down():
    replicas = {"1": ["a", "b", "c"], "2": ["d"]}
    assert live_replicas(replicas, {"b"}) == {"1": ["a", "c"], "2": ["d"]}
    assert live_replicas(replicas, {"a", "b", "c"})["1"] == ["a", "b", "c"]  # keep pointing: a restart answers there
    sockets = spread_replicas(slot_layout({"1": 100}), live_replicas(replicas, {"b"}))
    assert "b" not in sockets and sockets.count("a") == sockets.count("c") == SLOTS // 2


def test_router_retries_on_every_slot_and_stamps_its_trace_id_on_request_and_mirror(tmp_path):
    conf = render_model_conf("fraud", "127.0.0.1", 8100, tmp_path)
    assert f"proxy_next_upstream_tries {SLOTS};" in conf and "non_idempotent" in conf
    assert "proxy_next_upstream_timeout" in conf and "proxy_connect_timeout 1s;" in conf
    # The client's value never reaches a server: proxy_set_header replaces it, in both locations.
    assert conf.count(f"proxy_set_header {TRACE_HEADER} $request_id;") == 2


def _watch() -> Watch:
    return Watch("fraud", "3", "local", 1, "/s/r1.sock", "serve-fraud-v3-r1")


def test_watchdog_takes_a_dead_replica_down_at_once_and_a_slow_one_after_repeated_failures():
    watch = _watch()
    assert assess(watch, Outcome.REFUSED, 1.0) is None  # still starting: start-up failures are the target's
    assert assess(watch, Outcome.READY, 2.0) == "ready" and watch.state == "up"
    assert assess(watch, Outcome.READY, 2.5) is None
    assert assess(watch, Outcome.STOPPED, 3.0) == "down"
    assert down_record(watch)["detect_s"] == 0.5 and down_record(watch)["reason"] == Outcome.STOPPED.value
    assert assess(watch, Outcome.REFUSED, 3.5) is None and watch.state == "down"  # restarting
    assert assess(watch, Outcome.READY, 6.0) == "restored"
    record = restored_record(watch, 6.0)
    assert record["restore_s"] == 3.0 and record["outage_s"] == 3.5 and watch.downs == 1
    for n in range(1, FAILURES_TO_DOWN):
        assert assess(watch, Outcome.TIMEOUT, 6.0 + n * 0.5) is None
    assert assess(watch, Outcome.NOT_READY, 7.5) == "down"


def test_an_endpoint_has_replicas_and_answers_for_its_first():
    replicas = (Replica(0, "http://h:1", 1, "/a.sock", "p0"), Replica(1, "http://h:2", 2, "/b.sock", "p1"))
    endpoint = Endpoint("m", "1", replicas)
    assert (endpoint.url, endpoint.port, endpoint.socket, endpoint.urls) == ("http://h:1", 1, "/a.sock",
                                                                             ["http://h:1", "http://h:2"])
    assert Replica.of(replicas[1].record()) == replicas[1]
    with pytest.raises(ValueError, match="at least one replica"):
        Endpoint("m", "1", ())


def test_a_version_is_judged_on_all_its_replicas_metrics():
    a = MetricsSnapshot({200: 10, 500: 1}, {0.1: 8, float("inf"): 11})
    b = MetricsSnapshot({200: 5}, {0.1: 5, float("inf"): 5})
    merged = merge_snapshots([a, b])
    assert merged.by_status == {200: 15, 500: 1} and merged.latency_buckets == {0.1: 13, float("inf"): 16}


def test_spec_asks_for_at_least_one_replica():
    assert parse_spec(BASE).serving.replicas == 1
    assert parse_spec({**BASE, "serving": {"replicas": 3}}).serving.replicas == 3
    with pytest.raises(SpecError, match="serving.replicas"):
        parse_spec({**BASE, "serving": {"replicas": 0}})


def test_kubernetes_runs_the_spec_replicas_with_a_disruption_budget():
    from deployments.targets.kubernetes import render_manifests
    from modelyard.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "specs" / "fraud.yaml")
    objects = {o["kind"]: o for o in render_manifests(spec, "2", "img:2")}
    assert objects["Deployment"]["spec"]["replicas"] == spec.serving.replicas == 2
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] == 1  # one pod is always left to serve

