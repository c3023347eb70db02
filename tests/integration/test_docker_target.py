"""The docker target on a real Docker Engine: an offline-built image per registered version,
recorded in the registry and the ledger, served by two containers over TCP and the router's unix
sockets, each restarted by Docker when its server dies and health-checked on its readiness route."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.server.main import resolve_model_dir
from deployments.targets.docker import LABEL_MODEL, LABEL_SHA256, LABEL_VERSION, TAG_DIGEST, TAG_IMAGE, DockerTarget
from modelyard.ledger import ledger_from_settings
from modelyard.cli.stack import Stack

pytestmark = [pytest.mark.stack, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("MODELYARD_DOCKER_BASE_IMAGE", "modelyard/base:bookworm")


@pytest.fixture(scope="session")
def docker_base_image() -> str:
    """A running Docker Engine and the offline base image, by the same scripts `make test` runs."""
    subprocess.run(["bash", str(ROOT / "infra/scripts/start-docker.sh")], check=True)
    subprocess.run(["bash", str(ROOT / "infra/docker/build-base-image.sh"), BASE_IMAGE], check=True)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def registered(stack_env: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A version registered by the real build flow (validate → train → ONNX parity → register)."""
    from flows.build import build

    spec = yaml.safe_load((ROOT / "specs" / "breast_cancer.yaml").read_text())
    spec["name"] = f"docker-bc-{uuid.uuid4().hex[:6]}"
    path = tmp_path_factory.mktemp("docker") / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return build(str(path))


@pytest.fixture(scope="module")
def target(stack_env: Stack, docker_base_image: str, registered: dict) -> Iterator[DockerTarget]:
    target = DockerTarget(stack_env.settings.model_copy(update={"docker_base_image": docker_base_image}), replicas=2)
    yield target
    target.stop(registered["name"], registered["version"])
    # Untag this test's image but keep its parent layers: the next run's build reuses them.
    for image in target.client.images.list(filters={"label": f"{LABEL_MODEL}={registered['name']}"}):
        for tag in image.tags:
            target.client.images.remove(tag, noprune=True)


def _request_body(target: DockerTarget, model: str, version: str) -> dict:
    """The serving input example MLflow stored with the version."""
    model_dir = resolve_model_dir(f"models:/{model}/{version}", target.settings)
    return json.loads((model_dir / "serving_input_example.json").read_text())


def test_image_carries_the_version_and_its_digest_is_recorded(target: DockerTarget, registered: dict):
    model, version, sha = registered["name"], registered["version"], registered["artifact_sha256"]
    ref = target.build_image(model, version)
    print(f"image {ref.tag} built in {ref.seconds} s")

    assert ref.tag == f"modelyard/{model}:v{version}"
    image = target.client.images.get(ref.tag)
    assert image.id == ref.id
    assert image.labels[LABEL_MODEL] == model
    assert image.labels[LABEL_VERSION] == version
    assert image.labels[LABEL_SHA256] == sha
    tags = target._registry().get_model_version(model, version).tags
    assert tags[TAG_IMAGE] == ref.tag
    assert tags[TAG_DIGEST] == ref.id
    built = [r for r in ledger_from_settings(target.settings).records(subject=f"{model}/{version}")
             if r["action"] == "docker.image.built"]
    assert built and built[-1]["details"]["digest"] == ref.id


def test_container_serves_over_tcp_and_the_router_socket_then_stops(target: DockerTarget, registered: dict):
    model, version, sha = registered["name"], registered["version"], registered["artifact_sha256"]
    ledger = ledger_from_settings(target.settings)
    builds_before = [r["action"] for r in ledger.records(subject=f"{model}/{version}")].count("docker.image.built")
    endpoint = target.start(model, version)
    try:
        assert target.endpoint(model, version) == endpoint
        assert len(endpoint.replicas) == 2 and len({r.socket for r in endpoint.replicas}) == 2
        body = _request_body(target, model, version)
        over_tcp = httpx.post(f"{endpoint.url}/invocations", json=body, timeout=10)
        assert over_tcp.status_code == 200, over_tcp.text
        assert len(over_tcp.json()["predictions"]) == len(body["dataframe_split"]["data"])
        for replica in endpoint.replicas:
            assert replica.socket is not None
            with httpx.Client(transport=httpx.HTTPTransport(uds=replica.socket), base_url="http://router") as client:
                over_socket = client.post("/invocations", json=body, timeout=10)
                assert over_socket.status_code == 200, over_socket.text
                assert over_socket.json() == over_tcp.json()
                served = client.get("/version", timeout=5).json()
            assert (served["model"], served["version"], served["artifact_sha256"]) == (model, version, sha)
        # Docker restarts a container whose server dies, and checks the readiness route itself.
        container = target.client.containers.get(endpoint.replicas[0].handle)
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert "/v2/health/ready" in " ".join(container.attrs["Config"]["Healthcheck"]["Test"])
        os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while target.endpoint(model, version) != endpoint or container.attrs["RestartCount"] < 1:
            assert time.monotonic() < deadline, "the killed container was not restarted and ready again"
            time.sleep(0.5)
            container.reload()
    finally:
        assert target.stop(model, version)
    # A start reuses the image the registry records instead of building it again.
    builds_after = [r["action"] for r in ledger.records(subject=f"{model}/{version}")].count("docker.image.built")
    assert builds_after == max(builds_before, 1)
    assert target.endpoint(model, version) is None
    assert not target.client.containers.list(all=True, filters={"label": f"{LABEL_MODEL}={model}"})
    assert not any(Path(r.socket).exists() for r in endpoint.replicas)
    # The prediction log directory is shared with the host, where monitoring reads it.
    assert list((target.settings.prediction_log_dir / f"model={model}").rglob("*.parquet"))
