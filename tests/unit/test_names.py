"""One pattern for model names and versions (``modelyard.names``), checked at every entry point
(spec, CLI, inference API) and again at every sink a name reaches (nginx configuration, router
files, supervisord program names, socket and log paths, Docker image tags and container names,
Kubernetes object names): an invalid name is refused before anything is written; a valid one
passes through unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.server.contract import unknown_model_route
from deployments.targets.base import socket_path
from deployments.targets.docker import container_name, container_socket, image_tag, prediction_log_folder
from deployments.targets.kubernetes import deployment_name, dns_label
from deployments.targets.local import LocalTarget
from deployments.traffic.nginx import NginxRouter, render_model_conf
from modelyard.names import MODEL_NAME_MAX, InvalidName, check_model_name, check_version
from modelyard.settings import Settings
from modelyard.spec import SpecError, parse_spec
from tests.unit.test_inference_app import _app, call

INVALID_NAMES = {
    "traversal": "../x", "slash": "a/b", "dot-dot": "a..b", "leading dot": ".hidden", "nginx brace": "a;}",
    "newline": "a\nb", "carriage return": "a\rb", "double quote": 'a"b', "single quote": "a'b", "space": "a b",
    "empty": "", "too long": "a" * (MODEL_NAME_MAX + 1), "percent": "a%b", "nul": "a\x00b", "colon": "a:b",
}
INVALID_VERSIONS = {"traversal": "../1", "zero": "0", "letters": "1a", "empty": "", "negative": "-1",
                    "newline": "1\n", "too long": "1" * 11}
VALID_NAMES = ["fraud-detector", "Fraud_Detector.v2", "3d-model", "a", "a" * MODEL_NAME_MAX]


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


def _spec(name: str) -> dict:
    return {"name": name, "team": "t", "task": "regression", "data": {"source": "x.csv", "target": "y"},
            "metrics": {"primary": "r2"}, "policy": {"allow_any": True}}


def _sinks(settings: Settings) -> dict:
    """Every place a model name becomes part of a path, a file, a program or an object name."""
    return {
        "spec": lambda name: parse_spec(_spec(name)),
        "nginx model conf": lambda name: render_model_conf(name, "127.0.0.1", 8100, settings.state_dir),
        "nginx endpoint": lambda name: NginxRouter(settings).ensure(name),
        "nginx slots": lambda name: NginxRouter(settings).slot_dir(name),
        "nginx state file": lambda name: NginxRouter(settings).state(name),
        "supervisord program": lambda name: LocalTarget.program_name(name, "1", 0),
        "socket path": lambda name: socket_path(settings, name, "1"),
        "container socket": lambda name: container_socket(settings, name, "1"),
        "prediction log folder": lambda name: prediction_log_folder(settings, name, "1"),
        "docker image tag": lambda name: image_tag(name, "1"),
        "docker container": lambda name: container_name(settings, name, "1"),
        "kubernetes objects": lambda name: (dns_label(name), deployment_name(name, "1")),
    }


@pytest.mark.parametrize("name", INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
def test_an_invalid_model_name_is_refused_at_every_sink_before_anything_is_written(settings, name):
    for sink, make in _sinks(settings).items():
        with pytest.raises((InvalidName, SpecError), match="is not a valid model name"):
            make(name)
            pytest.fail(f"{sink} accepted {name!r}")
    assert not settings.state_dir.exists()  # no folder, file or socket was made on the way


@pytest.mark.parametrize("version", INVALID_VERSIONS.values(), ids=INVALID_VERSIONS.keys())
def test_an_invalid_version_is_refused_at_every_sink(settings, version):
    router = NginxRouter(settings)
    for sink, make in {
        "supervisord program": lambda: LocalTarget.program_name("fraud", version, 0),
        "socket path": lambda: socket_path(settings, "fraud", version),
        "container socket": lambda: container_socket(settings, "fraud", version),
        "docker image tag": lambda: image_tag("fraud", version),
        "docker container": lambda: container_name(settings, "fraud", version),
        "kubernetes objects": lambda: deployment_name("fraud", version),
        "router replica": lambda: router.set_replica("fraud", version, "/tmp/x.sock", live=True),
    }.items():
        with pytest.raises(InvalidName, match="is not a valid model version"):
            make()
            pytest.fail(f"{sink} accepted {version!r}")
    assert not settings.state_dir.exists()


@pytest.mark.parametrize("name", VALID_NAMES)
def test_a_valid_name_passes_every_sink_unchanged(settings, name):
    assert check_model_name(name) == name and check_version(7) == "7"
    assert parse_spec(_spec(name)).name == name
    assert LocalTarget.program_name(name, "7", 1) == f"serve-{name}-v7-r1"
    assert image_tag(name, "7").endswith(":v7")
    assert prediction_log_folder(settings, name, "7") == settings.prediction_log_dir / f"model={name}" / "version=7"
    assert socket_path(settings, name, "7").name.endswith("-v7-r0.sock")
    conf = render_model_conf(name, "127.0.0.1", 8100, settings.state_dir)
    assert f"# {name}: rendered by modelyard" in conf


def test_model_names_that_differ_only_in_punctuation_get_different_nginx_upstreams():
    first, second = (render_model_conf(n, "127.0.0.1", 8100, Path("s/x")).split("\n")[2] for n in ("a-b", "a_b"))
    assert first.startswith("upstream model_a_b_") and first != second


# -- the inference API -------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "field"), [
    ("/v2/models/a;b/infer", "model_name"), ("/v2/models/a b/ready", "model_name"),
    ("/v2/models/..%2Fx/infer", "model_name"), ("/v2/models//infer", "model_name"),
    ("/v2/models/fraud/versions/1a/infer", "model_version"), ("/v2/models/fraud/versions/0", "model_version"),
])
def test_an_invalid_name_in_an_inference_url_gets_a_400_naming_the_field(path, field):
    app, log = _app()
    status, _, body = call(app, "POST" if path.endswith("infer") else "GET", path, b"{}",
                           {"content-type": "application/json"})
    answer = json.loads(body)
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_NAME" and answer["field"] == field
    assert field in answer["message"] and not log.records


@pytest.mark.parametrize("path", ["/v2/models/other/infer", "/v2/models/fraud/versions/9/infer",
                                  "/v2/models/Fraud.v2/ready"])
def test_a_valid_name_of_a_model_this_server_does_not_serve_gets_a_404(path):
    app, _ = _app()
    status, _, body = call(app, "POST" if path.endswith("infer") else "GET", path, b"{}",
                           {"content-type": "application/json"})
    assert status == 404 and json.loads(body)["error_code"] == "MODEL_NOT_FOUND"
    assert unknown_model_route(path, "fraud", "3").status == 404


# -- the CLI -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "field"), [
    (["serve", "models:/../x/1"], "MODEL name"), (["serve", "models:/fraud/1a"], "MODEL version"),
    (["serve", "models:/a;b@champion"], "MODEL name"), (["serve", "models:/fraud@a b"], "MODEL alias"),
    (["serve", "/nonexistent", "--name", "a\nb"], "--name"), (["serve", "/nonexistent", "--version", "x"], "--version"),
    (["rollback", "a;}"], "MODEL"), (["rollback", "fraud", "--to", "../2"], "--to"),
])
def test_the_cli_refuses_an_invalid_name_with_exit_2_naming_the_argument(args, field, tmp_path, monkeypatch):
    from modelyard.cli.main import app

    monkeypatch.setenv("MODELYARD_STATE_DIR", str(tmp_path / "state"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"{field}: " in result.output and "is not a valid model" in result.output
    assert not (tmp_path / "state").exists()


def test_a_spec_with_an_invalid_name_is_refused_by_train_before_anything_runs(tmp_path):
    from modelyard.cli.main import app

    spec = tmp_path / "bad.yaml"
    spec.write_text(json.dumps(_spec("../escape")))
    result = CliRunner().invoke(app, ["train", str(spec)])
    assert result.exit_code == 2 and "name: '../escape' is not a valid model name" in result.output
