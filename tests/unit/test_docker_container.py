"""What a docker replica is given, how it is confined, and who prunes its prediction log: a
container gets its own tokens and no other secret, runs as a non-root user on a read-only root
file system with no capabilities, writes only its own socket folder and its version's log folder,
reads the trusted keys read-only, and never prunes (it could not record that in the ledger); the
host does, with a ledger record. The image holds every module the server imports. No Docker
Engine is needed here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from deployments.server.prediction_log import PredictionLog
from deployments.targets.base import host_replica
from deployments.targets.docker import PRUNER, DockerTarget, container_environment
from modelyard.catalog import Action
from modelyard.ledger import ledger_from_settings
from modelyard.settings import Settings


def _settings(tmp_path, **overrides) -> Settings:
    return Settings(state_dir=tmp_path / "state", api_token="t0ken", ledger_key="ledger-k3y", webhook_secret="webhook-s3cret",
                    database_url="postgresql://u:db-pa55@db:5432/m", admin_token="adm1n", **overrides)


def test_a_container_gets_what_a_server_needs_and_no_retention_nor_stack_secrets(tmp_path):
    settings = _settings(tmp_path)
    replica = host_replica(settings, 1, 8123, "/tmp/sock/r1.sock", "c-r1")
    env = container_environment(settings, replica)
    assert env["MODELYARD_PREDICTION_LOG_RETENTION_DAYS"] == "0"
    assert env["PORT"] == "8123" and env["UDS"] == "/tmp/sock/r1.sock"
    assert env["MODELYARD_API_TOKEN"] == "t0ken" and env["MODELYARD_ADMIN_TOKEN"] == "adm1n"
    assert env["MODELYARD_STATE_DIR"] == str(settings.state_dir)  # the mounted log is at the host's path
    assert not {"MODELYARD_LEDGER_KEY", "MODELYARD_DATABASE_URL", "MODELYARD_WEBHOOK_SECRET"} & set(env)
    assert not any(secret in value for value in env.values() for secret in ("ledger-k3y", "webhook-s3cret", "db-pa55"))


def test_the_host_prunes_a_container_served_models_log_and_records_it_in_the_ledger(tmp_path):
    settings = _settings(tmp_path, prediction_log_retention_days=7)
    now = datetime.now(UTC)
    for version, moment in (("1", now - timedelta(days=9)), ("2", now - timedelta(hours=1))):
        log = PredictionLog(settings.prediction_log_dir, "fraud", version)
        log.submit(f"r{version}", moment.timestamp(), {"x": [1.0, 2.0]}, [0, 1])
        log.close()
    pruned = DockerTarget(settings).prune_logs("fraud")
    assert set(pruned) == {"1"} and pruned["1"]["rows"] == 2
    records = [r for r in ledger_from_settings(settings).records() if r["action"] == Action.PREDICTION_LOG_PRUNED]
    assert [(r["actor"], r["subject"]) for r in records] == [(PRUNER, "fraud/1")]
    assert list((settings.prediction_log_dir / "model=fraud" / "version=2").rglob("*.parquet"))
    assert DockerTarget(settings.model_copy(update={"prediction_log_retention_days": 0})).prune_logs("fraud") == {}


# -- confinement -------------------------------------------------------------------------------

def test_a_container_runs_confined_and_writes_only_its_own_folders(tmp_path):
    import os

    from deployments.targets.docker import SERVER_UID, container_options, container_socket, prediction_log_folder
    from modelyard.signing import trusted_keys_dir

    settings = _settings(tmp_path)
    trusted_keys_dir(settings).mkdir(parents=True)
    socket = container_socket(settings, "fraud", "3", 1)
    options = container_options(settings, "fraud", "3", host_replica(settings, 1, 8123, str(socket), "c-r1"))
    uid, gid = (int(part) for part in options["user"].split(":"))
    assert uid != 0 and gid != 0
    if os.geteuid() == 0:
        assert (uid, gid) == (SERVER_UID, SERVER_UID)
    assert options["read_only"] is True and set(options["tmpfs"]) == {"/tmp"}
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    logs = prediction_log_folder(settings, "fraud", "3")
    writable = {host for host, mount in options["volumes"].items() if mount["mode"] == "rw"}
    assert writable == {str(socket.parent), str(logs)}  # nothing else of the host is writable
    assert all(mount["bind"] == host for host, mount in options["volumes"].items())  # same paths in and out
    assert options["volumes"][str(trusted_keys_dir(settings))]["mode"] == "ro"
    assert socket.parent != container_socket(settings, "fraud", "3", 0).parent  # one folder per replica
    for folder in (socket.parent, logs):
        assert (folder.stat().st_uid, folder.stat().st_gid) == (uid, gid)
    env = options["environment"]
    assert env["MODELYARD_TRUSTED_MODEL_KEYS_DIR"] == str(trusted_keys_dir(settings))
    assert not any(secret in value for value in env.values() for secret in ("ledger-k3y", "webhook-s3cret", "db-pa55"))


def test_without_trusted_keys_nothing_is_mounted_for_them(tmp_path):
    from deployments.targets.docker import container_options, container_socket

    settings = _settings(tmp_path)
    socket = container_socket(settings, "fraud", "3")
    options = container_options(settings, "fraud", "3", host_replica(settings, 0, 8123, str(socket), "c-r0"))
    assert all(mount["mode"] == "rw" for mount in options["volumes"].values()) and len(options["volumes"]) == 2


def _pinned_site(folder: Path) -> Path:
    """A site-packages of only the distributions ``pinned_requirements`` puts into an image:
    links to this virtualenv's files of each (modules, their libraries, their metadata)."""
    import importlib.metadata

    from deployments.targets.docker import pinned_requirements

    folder.mkdir()
    for line in pinned_requirements():
        distribution = importlib.metadata.distribution(line.split("==")[0])
        for top in {Path(str(f)).parts[0] for f in distribution.files or []} - {".."}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def test_the_image_holds_every_module_the_server_imports(tmp_path):
    """The image carries only APP_FILES of the project and the wheels of ``pinned_requirements``:
    everything a server imports (its own modules and, at run time, what verifies, loads and
    serves a model) must come from those alone, or every container start fails. Checked on a
    Python that sees only those (``-S``: no site-packages but the pinned ones)."""
    import subprocess
    import sys

    from deployments.targets.docker import build_context

    (tmp_path / "wheels").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "context").mkdir()
    app = build_context(_settings(tmp_path), tmp_path / "model", tmp_path / "wheels", tmp_path / "context") / "app"
    site = _pinned_site(tmp_path / "site")
    own = ["deployments.server.__main__", "deployments.server.main", "deployments.server.app",
           "deployments.server.model_runtime", "deployments.server.prediction_log", "modelyard.ledger",
           "modelyard.signing", "modelyard.names", "modelyard.redaction"]
    # What the server imports lazily when it verifies, loads and serves a model.
    runtime = ["model_signing.verifying", "model_signing.hashing", "skops.io", "onnxruntime", "onnx", "uvicorn",
               "uvloop", "httptools", "orjson", "mlflow.models", "mlflow.sklearn", "sklearn.ensemble", "pandas",
               "pyarrow.parquet", "yaml", "pydantic_settings"]
    check = ("import importlib\n"
             f"for name in {own + runtime!r}:\n"
             "    module = importlib.import_module(name)\n"
             f"    if name in {own!r}:\n"
             f"        assert module.__file__.startswith({str(app)!r}), (name, module.__file__)\n"
             "print('ok')")
    result = subprocess.run([sys.executable, "-S", "-c", check], cwd=app,
                            env={"PYTHONPATH": f"{app}:{site}", "PATH": "", "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
