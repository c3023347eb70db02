"""The ``docker`` target: each model version is an image ``modelyard/<model>:v<version>`` built
offline from the registered artifact, run as N host-network containers (``serving.replicas``)
beside the stack, each restarted by Docker when it exits (``unless-stopped``) and health-checked
by Docker on its readiness route (the image's ``HEALTHCHECK``).

The image carries the model files and the sha256 the registry recorded for them; the server in
it refuses to start if they differ, or if their signature does not verify against the trusted
keys (mounted read-only). Building needs no registry and no network inside the build: the
serving dependencies come from a wheelhouse made on the host, pinned to the versions this
virtualenv runs, and cached under the state dir by requirement set.

A container is confined: it runs as an unprivileged user (the image's uid 10001, or the host
user's own uid when modelyard itself does not run as root), on a read-only root file system with
a tmpfs /tmp, with every capability dropped and no-new-privileges. It can write only its own
socket folder and its version's prediction log folder, and its environment holds only its own
tokens (``replica_environment``): no database URL, webhook secret, registry credential or ledger
key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from deployments.targets.base import (Endpoint, Replica, TargetError, checked, desired_replicas, free_port, host_replica,
                                      model_key, prune_logs, ready_endpoint, replica_environment, socket_dir,
                                      socket_path, wait_ready)
from modelyard.catalog import TAG_ARTIFACT_SHA256, Action
from modelyard.names import check_model_name, check_version
from modelyard.processes import MAX_SOCKET_PATH
from modelyard.settings import Settings

__all__ = ["DockerTarget", "Endpoint", "ImageRef", "TargetError"]

# What `python -m deployments.server` imports, and nothing of the orchestration side.
# mlflow-skinny reads MLmodel signatures and loads the sklearn pyfunc fallback (with skops);
# onnx reads a classifier's labels from its graph.
SERVING_PACKAGES = (
    "numpy", "pandas", "pyarrow", "orjson", "pyyaml", "pydantic-settings",
    "uvicorn", "uvloop", "httptools",
    "onnxruntime", "onnx",
    "mlflow-skinny", "scikit-learn", "skops",
    "model-signing",  # verifies the model's signature before anything is loaded
    "pyopenssl",  # model-signing imports it (its certificate method) without declaring it
)
# The server's own code, relative to the project: nothing else goes into an image.
APP_FILES = ("deployments/__init__.py", "deployments/server", "modelyard/__init__.py",
             "modelyard/settings.py", "modelyard/integrity.py", "modelyard/catalog.py", "modelyard/onnx_feed.py",
             "modelyard/ledger.py", "modelyard/merkle.py", "modelyard/redaction.py", "modelyard/names.py",
             "modelyard/signing.py")
DOCKERFILE = Path("infra/docker/Dockerfile.model")

LABEL_MODEL = "org.modelyard.model"
LABEL_VERSION = "org.modelyard.version"
LABEL_SHA256 = "org.modelyard.artifact_sha256"
LABEL_STACK = "org.modelyard.stack"
LABEL_PORT = "org.modelyard.port"
LABEL_SOCKET = "org.modelyard.socket"
LABEL_REPLICA = "org.modelyard.replica"

TAG_IMAGE = "modelyard.docker.image"
TAG_DIGEST = "modelyard.docker.digest"
STOP_TIMEOUT_S = 30
# Docker restarts a container whose server exits, with its own growing delay; `docker stop` (a
# rollout retiring a version) is not undone.
RESTART_POLICY = {"Name": "unless-stopped"}
PRUNER = "host:docker-target"
# The image's unprivileged user (infra/docker/Dockerfile.model; the Kubernetes manifests use it too).
SERVER_UID = 10001
CONTAINER_TMPFS = {"/tmp": "rw,noexec,nosuid,nodev,size=256m"}


@dataclass(frozen=True)
class ImageRef:
    """A built model image: its tag, its content id (``sha256:…``) and how long the build took."""

    tag: str
    id: str
    seconds: float


# ---------------------------------------------------------------------------------- names

def slug(name: str) -> str:
    """A lowercase Docker name component for a model name; a name that had to change gets a short
    hash of the original, so that ``Fraud_Model`` and ``fraud-model`` stay two images."""
    check_model_name(name)
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"
    return cleaned if cleaned == name else f"{cleaned[:100]}-{model_key(name)[:6]}"


def image_tag(model: str, version: str) -> str:
    return f"modelyard/{slug(model)}:v{check_version(version)}"


def stack_key(settings: Settings) -> str:
    """Which stack a container belongs to: two stacks on one Docker Engine never see each other's."""
    return hashlib.sha1(str(settings.state_dir.resolve()).encode()).hexdigest()[:10]


def container_name(settings: Settings, model: str, version: str, replica: int = 0) -> str:
    model, version = checked(model, version)
    return f"modelyard-{slug(model)[:60]}-v{version}-r{int(replica)}-{stack_key(settings)}"


def container_socket(settings: Settings, model: str, version: str, replica: int = 0) -> Path:
    """A container's unix socket, alone in its own folder: the only folder of the socket dir the
    container can write (mounted read-write), so that it can neither remove nor replace another
    replica's socket."""
    shared = socket_path(settings, model, version, replica)
    path = socket_dir(settings) / "c" / shared.stem / "s.sock"
    if len(str(path)) > MAX_SOCKET_PATH:
        raise TargetError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes: use a shorter MODELYARD_STATE_DIR")
    return path


def prediction_log_folder(settings: Settings, model: str, version: str) -> Path:
    """Where a server of the version writes its prediction log (``PredictionLog.folder``)."""
    model, version = checked(model, version)
    return settings.prediction_log_dir / f"model={model}" / f"version={version}"


# ---------------------------------------------------------------------------- wheelhouse

def pinned_requirements(roots: Iterable[str] = SERVING_PACKAGES) -> list[str]:
    """``name==version`` of ``roots`` and everything they need, as this virtualenv has them
    installed: the image runs exactly the versions the tests ran. An extra a requirement asks for
    (``pydantic[email]``) brings that extra's requirements too."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}
    followed: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements were added
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset()) for root in roots]
    while pending:
        raw, extras = pending.pop()
        name = canonicalize_name(raw)
        wanted = {"", *extras} - {extra for dist, extra in followed if dist == name}
        if not wanted:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as error:
            raise TargetError(f"{name} is needed to serve but is not installed in {sys.prefix}") from error
        pinned[name] = distribution.version
        followed |= {(name, extra) for extra in wanted}
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra}) for extra in wanted):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def pip_wheel() -> Path:
    """The pip wheel that ``ensurepip`` bundles: it runs as it is (``python pip.whl/pip``), on the
    host when the virtualenv has no pip (uv-synced ones do not) and in the image build, so the
    image's venv needs no pip of its own."""
    import ensurepip

    # Upstream Python bundles it with ensurepip; Debian's python3-venv keeps it in python-wheels.
    places = [Path(ensurepip.__file__).parent / "_bundled", Path(sysconfig.get_config_var("WHEEL_PKG_DIR") or "/nonexistent"),
              Path("/usr/share/python-wheels")]
    for place in places:
        wheels = sorted(place.glob("pip-*.whl")) if place.is_dir() else []
        if wheels:
            return wheels[-1]
    raise TargetError("no bundled pip wheel (ensurepip): install python3-venv")


def pip_command() -> list[str]:
    """How to run pip with this interpreter: its own pip, else the bundled wheel."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    return [sys.executable, str(pip_wheel() / "pip")]


def ensure_wheelhouse(settings: Settings, requirements: list[str]) -> Path:
    """The directory of wheels for ``requirements`` (plus its requirements.txt and, in tools/, the
    pip that installs them), downloaded once per requirement set and platform; later builds reuse
    it without any download."""
    tool = pip_wheel()
    key = hashlib.sha256("\n".join([sysconfig.get_platform(), sys.implementation.cache_tag, tool.name,
                                    *requirements]).encode())
    house = settings.state_dir / "wheelhouse" / key.hexdigest()[:16]
    if (house / "requirements.txt").exists():
        return house
    house.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=house.parent))
    try:
        (partial / "wanted.txt").write_text("\n".join(requirements) + "\n")
        # `pip wheel` takes a published wheel as it is and builds one only for an sdist-only pin.
        result = subprocess.run(
            [*pip_command(), "wheel", "--no-deps", "--prefer-binary", "--disable-pip-version-check", "-q",
             "--wheel-dir", str(partial), "-r", str(partial / "wanted.txt")],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise TargetError(f"building the serving wheelhouse failed: {result.stderr.strip()[-2000:]}")
        (partial / "tools").mkdir()
        shutil.copy2(tool, partial / "tools" / tool.name)
        (partial / "wanted.txt").rename(partial / "requirements.txt")
        try:
            partial.rename(house)
        except OSError:  # another build finished the same wheelhouse first
            pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return house


# --------------------------------------------------------------------------------- images

def _link_tree(source: Path, target: Path) -> None:
    """Copy a tree into a build context, hard-linking files where the file system allows."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_context(settings: Settings, model_dir: Path, wheelhouse: Path, root: Path) -> Path:
    """A Docker build context: the Dockerfile, wheels/, app/ (the server's code) and model/."""
    shutil.copy2(settings.project_dir / DOCKERFILE, root / "Dockerfile")
    _link_tree(wheelhouse, root / "wheels")
    for relative in APP_FILES:
        source = settings.project_dir / relative
        target = root / "app" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            _link_tree(source, target)
        else:
            shutil.copy2(source, target)
    _link_tree(model_dir, root / "model")
    return root


def container_environment(settings: Settings, replica: Replica) -> dict[str, str]:
    """A replica's environment: ``replica_environment`` (its own tokens, no other secret, no
    prediction log retention: the host prunes, with a ledger record, ``DockerTarget.prune_logs``),
    its port and its socket."""
    return {**replica_environment(settings), "PORT": str(replica.port), "UDS": str(replica.socket)}


def container_user() -> tuple[int, int]:
    """Who a container runs as: the image's unprivileged user when modelyard runs as root (which
    then hands it the folders it writes), else the host user itself (never root either way), so
    that what it writes into the shared folders is the host user's."""
    if os.geteuid() == 0:
        return SERVER_UID, SERVER_UID
    return os.getuid(), os.getgid()


def writable_folder(path: Path, owner: tuple[int, int]) -> Path:
    """Make ``path`` (and the folders in it) a folder a container running as ``owner`` can write."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for folder in [path, *(p for p in path.rglob("*") if p.is_dir() and not p.is_symlink())]:
            os.chown(folder, *owner)
    return path


def container_options(settings: Settings, model: str, version: str, replica: Replica) -> dict:
    """How a replica's container runs (``docker run`` options, the Docker SDK's names): confined
    as the module says, with its socket folder and its prediction log folder read-write at the
    host's paths (the router connects to the one, the monitor reads the other) and the trusted
    model keys read-only."""
    owner = container_user()
    volumes = {
        str(writable_folder(Path(str(replica.socket)).parent, owner)): {"bind": str(Path(str(replica.socket)).parent),
                                                                         "mode": "rw"},
        str(writable_folder(prediction_log_folder(settings, model, version), owner)): {
            "bind": str(prediction_log_folder(settings, model, version)), "mode": "rw"},
    }
    from modelyard.signing import trusted_keys_dir

    keys = trusted_keys_dir(settings)
    if keys.is_dir():
        volumes[str(keys)] = {"bind": str(keys), "mode": "ro"}
    return {
        "user": f"{owner[0]}:{owner[1]}", "read_only": True, "tmpfs": dict(CONTAINER_TMPFS),
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "network_mode": "host",
        "volumes": volumes, "environment": container_environment(settings, replica),
    }


def _log_tail(container, lines: int = 20) -> str:
    try:
        return container.logs(tail=lines).decode(errors="replace").strip()
    except Exception as error:  # the container may be gone already
        return f"(no log: {error})"


class DockerTarget:
    """Model versions as containers on the local Docker Engine, reachable on a loopback port and
    on the version's unix socket (bind-mounted, so the host's nginx connects to it)."""

    name = "docker"

    def __init__(self, settings: Settings, replicas: int | None = None) -> None:
        """``replicas``: how many containers per version; by default what the version's spec says."""
        self.settings = settings
        self.replica_count = replicas

    @cached_property
    def client(self):
        """The Docker Engine's client, made on first use (and again after a failed attempt)."""
        import docker

        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except Exception as error:
            raise TargetError(f"the Docker Engine does not answer ({error}): run infra/scripts/start-docker.sh") from error
        return client

    # -- images ------------------------------------------------------------------------

    def _registry(self):
        from modelyard.resources import get_resources

        return get_resources(self.settings).registry

    def _registered(self, model: str, version: str) -> tuple[str, Path]:
        """The recorded sha256 of a version and its downloaded model directory, checked against
        it and its signature here, before it goes into an image."""
        from deployments.server.main import registered_digest, resolve_model_dir

        _, _, expected = registered_digest(f"models:/{model}/{version}", self.settings)
        if not expected:
            raise TargetError(f"{model} v{version} has no recorded artifact sha256: refusing to build an image of it")
        try:
            return expected, resolve_model_dir(f"models:/{model}/{version}", self.settings, expected, actor=PRUNER)
        except ValueError as error:  # a tampered artifact or a refused signature
            raise TargetError(f"{model} v{version} cannot go into an image: {error}") from error

    def build_image(self, model: str, version: str) -> ImageRef:
        """Build the image of ``models:/model/version`` and record it on the version and in the ledger."""
        import docker.errors

        from modelyard.audit import append_audit_record

        model, version = checked(model, version)
        started = time.monotonic()
        expected, model_dir = self._registered(model, version)
        house = ensure_wheelhouse(self.settings, pinned_requirements())
        tag = image_tag(model, version)
        scratch = self.settings.state_dir / "docker-build"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as root:
            build_context(self.settings, model_dir, house, Path(root))
            try:
                image, _ = self.client.images.build(
                    path=root, tag=tag, rm=True, forcerm=True, network_mode="none",
                    buildargs={"BASE_IMAGE": self.settings.docker_base_image, "MODEL_NAME": model,
                               "MODEL_VERSION": str(version), "MODEL_SHA256": expected})
            except docker.errors.BuildError as error:
                lines = [str(chunk.get("stream") or chunk.get("error") or "").rstrip() for chunk in error.build_log]
                raise TargetError(f"building {tag} failed: {error.msg}\n" + "\n".join(line for line in lines if line)[-3000:]) from error
            except docker.errors.APIError as error:
                raise TargetError(f"building {tag} failed: {error.explanation or error}") from error
        ref = ImageRef(tag, image.id, round(time.monotonic() - started, 2))
        registry = self._registry()
        registry.set_model_version_tag(model, str(version), TAG_IMAGE, tag)
        registry.set_model_version_tag(model, str(version), TAG_DIGEST, image.id)
        append_audit_record(Action.IMAGE_BUILT, f"{model}/{version}",
                            {"image": tag, "digest": image.id, "artifact_sha256": expected,
                             "base_image": self.settings.docker_base_image, "seconds": ref.seconds}, self.settings)
        return ref

    def ensure_image(self, model: str, version: str) -> ImageRef:
        """The version's image: reused when the registry already records this very image and it
        carries the sha256 registered now, else built."""
        import docker.errors

        tag = image_tag(model, version)
        try:
            image = self.client.images.get(tag)
            recorded = self._registry().get_model_version(model, str(version)).tags
        except docker.errors.ImageNotFound:
            return self.build_image(model, version)
        if (recorded.get(TAG_DIGEST) == image.id
                and image.labels.get(LABEL_SHA256) == recorded.get(TAG_ARTIFACT_SHA256)):
            return ImageRef(tag, image.id, 0.0)
        return self.build_image(model, version)

    # -- containers ----------------------------------------------------------------------

    def _containers(self, model: str, version: str, running_only: bool = True) -> list:
        labels = [f"{LABEL_MODEL}={model}", f"{LABEL_VERSION}={version}", f"{LABEL_STACK}={stack_key(self.settings)}"]
        return self.client.containers.list(all=not running_only, filters={"label": labels})

    @staticmethod
    def _replica(settings: Settings, container) -> Replica:
        labels = container.labels
        return host_replica(settings, int(labels.get(LABEL_REPLICA, 0)), int(labels[LABEL_PORT]),
                            labels.get(LABEL_SOCKET) or None, container.name)

    def endpoint(self, model: str, version: str) -> Endpoint | None:
        """The version with its ready replicas, found by the labels of its running containers."""
        replicas = sorted((self._replica(self.settings, c) for c in self._containers(model, version)),
                          key=lambda r: r.index)
        return ready_endpoint(model, version, replicas)

    def _run(self, model: str, version: str, image: ImageRef, replica: Replica):
        """One replica's container (``container_options``): host network, its socket and log
        folders at the host's paths."""
        return self.client.containers.run(
            image.id, detach=True, name=replica.handle, **container_options(self.settings, model, version, replica),
            labels={LABEL_MODEL: model, LABEL_VERSION: str(version), LABEL_STACK: stack_key(self.settings),
                    LABEL_PORT: str(replica.port), LABEL_SOCKET: str(replica.socket), LABEL_REPLICA: str(replica.index)},
            # Docker's health check is the image's (infra/docker/Dockerfile.model): the readiness route.
            restart_policy=RESTART_POLICY, stop_signal="SIGTERM")

    def start(self, model: str, version: str, timeout_s: float = 180) -> Endpoint:
        """Run N containers of the version's image (built when needed) and wait until every one
        is ready."""
        import docker.errors

        model, version = checked(model, version)
        self.prune_logs(model)
        running = self.endpoint(model, version)
        count = self.replica_count or desired_replicas(self.settings, model, version)
        if running is not None and len(running.replicas) == count:
            return running
        self.stop(model, version)  # exited containers of this version would hold their names
        image = self.ensure_image(model, version)
        replicas = [host_replica(self.settings, index, free_port(self.settings.host),
                                 str(container_socket(self.settings, model, version, index)),
                                 container_name(self.settings, model, version, index)) for index in range(count)]
        containers = {}
        try:
            for replica in replicas:
                containers[replica.handle] = self._run(model, version, image, replica)
        except docker.errors.APIError as error:
            self.stop(model, version)
            raise TargetError(f"{model} v{version} could not start: {error.explanation or error}") from error
        self._serving().record_replicas(model, version, self.name, [r.record() for r in replicas])

        def exited(replica: Replica) -> bool:
            container = containers[replica.handle]
            container.reload()
            # A server that exits is restarted by the policy: any restart during start-up is a failure.
            return container.status in {"exited", "dead", "restarting"} or container.attrs.get("RestartCount", 0) > 0

        failed = wait_ready(replicas, timeout_s, exited)
        if failed is None:
            return Endpoint(model, version, tuple(replicas))
        tail = _log_tail(containers[failed.handle])
        crashed = exited(failed)
        self.stop(model, version)
        if crashed:
            raise TargetError(f"{model} v{version} exited during start-up: {tail}")
        raise TargetError(f"{model} v{version} was not ready after {timeout_s:.0f} s: {tail}")

    def _serving(self):
        from modelyard.resources import get_resources

        return get_resources(self.settings).serving

    def prune_logs(self, model: str) -> dict[str, dict]:
        """The prediction log retention of a model its containers serve (they never prune, see
        ``container_environment``): partitions older than the host's
        ``prediction_log_retention_days`` are recorded in the ledger, then deleted. Run at every
        start; what was deleted, by version."""
        return prune_logs(self.settings, model, PRUNER)

    def restart_replica(self, handle: str, hung: bool, pid: int | None = None) -> str:
        """Have a lost replica started again; what was done. A hung container is restarted at
        once (killed, no grace); one that exited is left to the restart policy unless Docker
        gave up on it."""
        import docker.errors

        try:
            container = self.client.containers.get(handle)
        except docker.errors.NotFound:
            return "gone"
        if hung and container.status == "running":
            container.restart(timeout=0)
            return "restarted"
        if container.status in {"exited", "dead", "created"}:
            container.start()
            return "started"
        return f"left to Docker ({container.status})"

    def stop(self, model: str, version: str) -> bool:
        """Stop the version's containers gracefully (SIGTERM, then SIGKILL after 30 s) and remove them."""
        import docker.errors

        model, version = checked(model, version)
        self._serving().forget_replicas(model, version)  # the watchdog lets them go first
        stopped = False
        for container in self._containers(model, version, running_only=False):
            socket = container.labels.get(LABEL_SOCKET)
            try:
                if container.status == "running":
                    container.stop(timeout=STOP_TIMEOUT_S)
                    stopped = True
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            folder = Path(socket).parent if socket else None
            if folder is not None and folder.parent == socket_dir(self.settings) / "c":
                shutil.rmtree(folder, ignore_errors=True)  # its own socket folder (container_socket)
        return stopped
