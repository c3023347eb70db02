"""nginx on loopback as each model's stable endpoint, switched without reloads.

Every model gets a server block on its own port whose upstream is a fixed ring of
``SLOTS`` unix-socket *slots*. Each slot is a symlink to the socket of one replica of a running
version; nginx opens a new upstream connection per request, so re-pointing a slot (an atomic
``rename``) moves the next request and leaves in-flight ones alone. Weights are slot counts:
with 20 slots, a 10% canary owns 2 of them; a version's slots alternate over its live replicas.

A request that meets a dead replica (refused, or cut off mid-request) is retried on the next
slot: inference is safe to retry. The watchdog re-points a dead or hung replica's slots to its
version's live replicas (``set_replica``), and kills a hung one, which turns its in-flight
requests into retried ones.

Why not ``nginx -s reload``: a reload makes the old workers close every idle keep-alive
client connection, and a client that sends its next request at that instant sees the
connection drop without an answer (measured: about one in 20,000 requests fails across a
reload under a tight loop). Reloads now happen only when a model gets its endpoint for the
first time.

Shadow traffic: every request is mirrored (``mirror``) to the model's shadow slot, which
points at nginx's own null socket (answers 204 at once) until a shadow version is attached.
Both the primary and the mirror carry the same ``X-Request-ID`` so that predictions can be
compared by request id, and the router's own id of the request (``X-Modelyard-Trace``,
nginx's ``$request_id``, replacing any client value); the client only ever sees the primary's
answer.

Unprivileged workers: when nginx starts as root, its workers run as ``nobody`` (its own group),
never as root. They must still reach the slots and the replicas' sockets although the state dir's
ancestors may be private (a home directory, pytest's 0700 temp dirs), so nginx runs with its
working directory at the router's root and every path a worker opens is relative to it: slot
paths, the slots' symlink targets (``../../../sock/…``), the null socket and the temporary
files. Resolving a relative path needs search permission only on the directories it passes, all
of them under the state dir, which the router keeps traversable (``o+x``, never readable).
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deployments.targets.base import Endpoint, model_key
from modelyard.catalog import SHADOW_HEADER, TRACE_HEADER
from modelyard.names import check_model_name, check_version
from modelyard.processes import MAX_SOCKET_PATH
from modelyard.settings import Settings

SLOTS = 20
UPSTREAM_CONNECT_TIMEOUT_S = 1
# No retry starts later than this after the first try (a slow answer is not retried forever).
RETRY_WINDOW_S = 10
# Who nginx's workers run as when its master starts as root.
WORKER_USER = "nobody"


class TrafficError(RuntimeError):
    pass


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def slot_counts(weights: dict[str, int], slots: int = SLOTS) -> dict[str, int]:
    """Slots per backend for percentage ``weights`` (summing to 100); every backend with a
    positive weight gets at least one slot, and the counts sum to ``slots``."""
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) != 100:
        raise ValueError(f"weights must be non-negative percentages summing to 100, got {weights}")
    positive = {k: w for k, w in weights.items() if w > 0}
    counts = {k: max(1, round(w * slots / 100)) for k, w in positive.items()}
    # Fix rounding on the largest backend so that the ring is always full.
    largest = max(positive, key=lambda k: positive[k])
    counts[largest] += slots - sum(counts.values())
    if counts[largest] < 1:
        raise ValueError(f"too many backends for {slots} slots: {weights}")
    return counts


def slot_layout(weights: dict[str, int], slots: int = SLOTS) -> list[str]:
    """Which backend each slot points at; minority backends are spread evenly over the ring
    so that round-robin interleaves them instead of sending them bursts."""
    counts = slot_counts(weights, slots)
    layout: list[str | None] = [None] * slots
    majority = max(counts, key=lambda k: counts[k])
    for backend, count in sorted(counts.items(), key=lambda item: item[1]):
        if backend == majority:
            continue
        free = [i for i, b in enumerate(layout) if b is None]
        for n in range(count):
            layout[free[(n * len(free)) // count]] = backend
    return [b if b is not None else majority for b in layout]


def spread_replicas(layout: list[str], replicas: dict[str, list[str]]) -> list[str]:
    """The socket of each slot: each backend's slots take its ``replicas`` in turn, so that
    neighbouring slots of one backend are different replicas (a retry moves to another one)."""
    turn: dict[str, int] = {}
    sockets = []
    for backend in layout:
        choices = replicas[backend]
        if not choices:
            raise ValueError(f"backend {backend} has no replica to point a slot at")
        sockets.append(choices[turn.get(backend, 0) % len(choices)])
        turn[backend] = turn.get(backend, 0) + 1
    return sockets


def live_replicas(replicas: dict[str, list[str]], down: set[str]) -> dict[str, list[str]]:
    """Each backend's replicas that are not down; all of them when every one is (its slots then
    stay where they are, and answer again as soon as a restarted replica listens)."""
    return {backend: [s for s in sockets if s not in down] or list(sockets) for backend, sockets in replicas.items()}


def render_model_conf(model: str, listen_host: str, listen_port: int, slot_dir: Path, slots: int = SLOTS) -> str:
    """The server block of one model: a ring of slot sockets, a shadow slot and a mirror.
    ``slot_dir`` as the workers see it (relative to nginx's working directory, the router root).
    The model name goes into the file: only a valid name (``modelyard.names``) does."""
    check_model_name(model)
    upstream = f"model_{_safe(model)}_{model_key(model)[:6]}"  # "a-b" and "a_b" stay two upstreams
    servers = "\n".join(f"    server unix:{slot_dir / f'{i:02d}'} max_fails=0;" for i in range(slots))
    # Each try on a dead replica fails at once (refused); with every slot allowed, a request
    # finds a live replica however many of the slots it meets first point at the dead one.
    retries = f"""proxy_next_upstream error timeout non_idempotent http_502 http_503;
        proxy_next_upstream_tries {slots};
        proxy_next_upstream_timeout {RETRY_WINDOW_S}s;
        proxy_connect_timeout {UPSTREAM_CONNECT_TIMEOUT_S}s;"""
    return f"""# {model}: rendered by modelyard; do not edit. Traffic moves by re-pointing the slots in
# {slot_dir}, not by editing this file.
upstream {upstream} {{
{servers}
}}
upstream {upstream}_shadow {{
    server unix:{slot_dir / 'shadow'} max_fails=0;
}}
server {{
    listen {listen_host}:{listen_port};
    client_max_body_size 16m;
    location / {{
        mirror /_modelyard_shadow;
        mirror_request_body on;
        proxy_pass http://{upstream};
        proxy_http_version 1.1;
        proxy_set_header Connection "close";
        proxy_set_header X-Request-ID $modelyard_request_id;
        proxy_set_header {TRACE_HEADER} $request_id;
        # Inference is idempotent: a request that met a replica or a version going away is
        # retried on another slot instead of failing.
        {retries}
    }}
    location = /_modelyard_shadow {{
        internal;
        proxy_pass http://{upstream}_shadow$request_uri;
        proxy_http_version 1.1;
        proxy_set_header Connection "close";
        proxy_set_header X-Request-ID $modelyard_request_id;
        proxy_set_header {TRACE_HEADER} $request_id;
        proxy_set_header {SHADOW_HEADER} "1";
        proxy_connect_timeout 1s;
        proxy_read_timeout 5s;
    }}
}}
"""


def _link_text(link: Path, target: str) -> str:
    """What ``link`` holds to reach ``target``: relative to the link's folder, so that resolving
    it never needs the state dir's ancestors (see the module's docstring)."""
    return os.path.relpath(target, link.parent) if os.path.isabs(target) else target


def _point(link: Path, target: str) -> None:
    """Re-point ``link`` at ``target`` atomically (symlink beside it, then rename over it)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(_link_text(link, target))
    os.replace(tmp, link)


def _repoint(link: Path, target: str) -> None:
    """``_point``, only when ``link`` points elsewhere now."""
    if not link.is_symlink() or os.readlink(link) != _link_text(link, target):
        _point(link, target)


def worker_user() -> tuple[str, str] | None:
    """(user, group) nginx's workers run as: ``nobody`` and its own group when nginx starts as
    root; None when it does not (its workers then run as the same unprivileged user)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(WORKER_USER)
        group = grp.getgrgid(user.pw_gid).gr_name
    except KeyError as error:
        raise TrafficError(f"no user {WORKER_USER!r} (and group) for nginx's workers to run as: refusing to run "
                           "them as root") from error
    return user.pw_name, group


def open_for_workers(base: Path, path: Path) -> None:
    """Let another user pass through the folders from ``base`` down to ``path``'s own folder
    (search only, ``o+x``; nothing becomes listable or readable)."""
    base, folder = base.resolve(), Path(path).parent.resolve()
    if not folder.is_relative_to(base):
        raise TrafficError(f"{path} is outside {base}: nginx's workers could not reach it")
    for current in [folder, *folder.parents]:
        mode = current.stat().st_mode
        if not mode & 0o001:
            current.chmod((mode & 0o7777) | 0o001)
        if current == base:
            return


class NginxRouter:
    name = "nginx"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "nginx"
        self.models_dir = self.root / "models"
        self.main_conf = self.root / "nginx.conf"
        self.pid_file = self.root / "nginx.pid"
        self.null_socket = self.root / "null.sock"
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    # --- the nginx process -------------------------------------------------------------

    def _main_conf_text(self) -> str:
        # Paths a worker opens are relative to the router root (nginx's working directory and,
        # as "./", its prefix); the master alone opens the pid file, the log and the includes.
        who = worker_user()
        user = f"user {who[0]} {who[1]};\n" if who else ""
        return f"""# rendered by modelyard; do not edit. Relative paths start at {self.root} (nginx runs there).
{user}worker_processes 1;
pid {self.pid_file};
error_log {self.settings.logs_dir / 'nginx-error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    map $http_x_request_id $modelyard_request_id {{
        ""      $request_id;
        default $http_x_request_id;
    }}
    # Where a model's shadow slot points while no shadow version runs.
    server {{
        listen unix:{self.null_socket.relative_to(self.root)};
        location / {{ return 204; }}
    }}
    include {self.models_dir}/*.conf;
}}
"""

    def running(self) -> bool:
        try:
            pid = int(self.pid_file.read_text().strip())
            Path(f"/proc/{pid}").stat()
            return True
        except (FileNotFoundError, ValueError):
            return False

    def _nginx(self, *args: str) -> None:
        result = subprocess.run([self.binary, "-c", str(self.main_conf), "-p", "./", *args], cwd=self.root,
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise TrafficError(f"nginx {' '.join(args)} failed: {result.stderr.strip()}")

    def _apply(self, changed: bool) -> None:
        """Start nginx, or reload it only when its configuration changed."""
        self._nginx("-t")
        if not self.running():
            self.null_socket.unlink(missing_ok=True)
            self._nginx()
        elif changed:
            self._nginx("-s", "reload")

    def stop(self) -> None:
        if self.running():
            self._nginx("-s", "quit")

    # --- per-model endpoints -----------------------------------------------------------

    def slot_dir(self, model: str) -> Path:
        path = self.root / "s" / model_key(check_model_name(model))
        if len(str(path / "shadow")) > MAX_SOCKET_PATH:
            raise TrafficError(f"slot path {path} is too long for a unix socket: use a shorter MODELYARD_STATE_DIR")
        return path

    def state(self, model: str) -> dict:
        """The model's routing as last set: ``weights`` (version → percent), ``replicas``
        (version → its replicas' sockets), ``down`` (sockets taken out of the route),
        ``shadow`` and ``shadow_replicas``."""
        try:
            return json.loads(self._model_file(model, ".json").read_text())
        except FileNotFoundError:
            return {}

    def _model_file(self, model: str, suffix: str) -> Path:
        """A model's own file in the router's models folder: only a valid name makes one."""
        return self.models_dir / f"{check_model_name(model)}{suffix}"

    def _save_state(self, model: str, state: dict) -> None:
        path = self._model_file(model, ".json")
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staged.write_text(json.dumps(state | {"changed_at": time.time()}))
        os.replace(staged, path)

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        """One change of a model's slots at a time (a rollout and the watchdog may both move them)."""
        lock = self._model_file(model, ".lock")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def stable_port(self, model: str) -> int:
        port = self.state(model).get("port")
        if port:
            return int(port)
        with socket.socket() as sock:
            sock.bind((self.settings.host, 0))
            return sock.getsockname()[1]

    def url(self, model: str) -> str:
        return f"http://{self.settings.host}:{self.stable_port(model)}"

    def ensure(self, model: str) -> str:
        """The model's stable endpoint, created (one reload) if it does not exist yet."""
        check_model_name(model)
        for sub in ("models", "tmp", "s"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        main_text = self._main_conf_text()
        changed = not self.main_conf.exists() or self.main_conf.read_text() != main_text
        if changed:
            self.main_conf.write_text(main_text)
        port = self.stable_port(model)
        slot_dir = self.slot_dir(model)
        slot_dir.mkdir(parents=True, exist_ok=True)
        shadow = slot_dir / "shadow"
        if not shadow.is_symlink():
            _point(shadow, str(self.null_socket))
        if worker_user() is not None:
            open_for_workers(self.settings.state_dir, shadow)
        conf = self._model_file(model, ".conf")
        text = render_model_conf(model, self.settings.host, port, slot_dir.relative_to(self.root))
        if not conf.exists() or conf.read_text() != text:
            conf.write_text(text)
            changed = True
        if not self.state(model):
            self._save_state(model, {"port": port, "weights": {}, "replicas": {}, "down": [], "shadow": None,
                                     "shadow_replicas": []})
        self._apply(changed)
        return self.url(model)

    def _render(self, model: str, state: dict) -> None:
        """Point every slot (and the shadow slot) as ``state`` says, skipping down replicas."""
        down = set(state.get("down", []))
        slot_dir = self.slot_dir(model)
        weights = state.get("weights") or {}
        replicas = state.get("replicas") or {}
        if weights and all(replicas.get(version) for version in weights):
            layout = slot_layout(weights)
            for index, target in enumerate(spread_replicas(layout, live_replicas(replicas, down))):
                _repoint(slot_dir / f"{index:02d}", target)
        shadow = live_replicas({"shadow": state.get("shadow_replicas") or []}, down)["shadow"]
        _repoint(slot_dir / "shadow", shadow[0] if state.get("shadow") and shadow else str(self.null_socket))

    def route(self, model: str, weights: dict[Endpoint, int]) -> str:
        """Send ``model``'s traffic to endpoints by percentage (summing to 100), spread over each
        endpoint's replicas: each slot is re-pointed atomically; requests already in flight
        finish where they are."""
        url = self.ensure(model)
        for endpoint in weights:
            check_version(endpoint.version)
            if any(not replica.socket for replica in endpoint.replicas):
                raise TrafficError(f"{model} v{endpoint.version} has no unix socket for the router")
            self._reachable(endpoint)
        slot_layout({e.version: w for e, w in weights.items()})  # refuses bad weights before anything moves
        with self._locked(model):
            state = self.state(model)
            replicas = {e.version: [r.socket for r in e.replicas] for e in weights}
            # The endpoints' replicas were just found ready: none of them is down.
            ready = {s for sockets in replicas.values() for s in sockets}
            down = set(state.get("down", [])) & set(state.get("shadow_replicas") or []) - ready
            state.update(port=self.stable_port(model), weights={e.version: w for e, w in weights.items() if w > 0},
                         replicas=replicas, down=sorted(down))
            self._render(model, state)
            self._save_state(model, state)
        return url

    def _reachable(self, endpoint: Endpoint) -> None:
        """Make the folders of the endpoint's sockets passable for unprivileged workers."""
        if worker_user() is not None:
            for replica in endpoint.replicas:
                open_for_workers(self.settings.state_dir, Path(str(replica.socket)))

    def weights(self, model: str) -> dict[str, int]:
        """Percent of traffic per version, as last routed."""
        return {str(v): int(w) for v, w in self.state(model).get("weights", {}).items()}

    def shadow(self, model: str, endpoint: Endpoint | None) -> None:
        """Mirror every request of ``model`` to ``endpoint`` (``None``: mirror to nowhere)."""
        self.ensure(model)
        if endpoint is not None:
            check_version(endpoint.version)
            if any(not replica.socket for replica in endpoint.replicas):
                raise TrafficError(f"{model} v{endpoint.version} has no unix socket for the router")
            self._reachable(endpoint)
        with self._locked(model):
            state = self.state(model)
            state.update(shadow=endpoint.version if endpoint is not None else None,
                         shadow_replicas=[r.socket for r in endpoint.replicas] if endpoint is not None else [])
            self._render(model, state)
            self._save_state(model, state)

    def set_replica(self, model: str, version: str, socket_path: str, live: bool) -> bool:
        """Take a replica of ``version`` out of the model's route (``live=False``: its slots go to
        the version's live replicas) or put it in (``live=True``, also a replica the version's
        endpoint did not have when it was routed). Idempotent (the watchdog asserts it on every
        probe); True if the routing changed."""
        check_version(version)
        with self._locked(model):
            state = self.state(model)
            if not state:
                return False
            changed = json.loads(json.dumps(state))
            down = set(changed.get("down", []))
            if live:
                if worker_user() is not None:
                    open_for_workers(self.settings.state_dir, Path(socket_path))
                down.discard(socket_path)
                replicas = changed.setdefault("replicas", {})
                if version in (changed.get("weights") or {}) and socket_path not in replicas.get(version, []):
                    replicas[version] = sorted([*replicas.get(version, []), socket_path])
                shadowed = changed.get("shadow_replicas") or []
                if changed.get("shadow") == version and socket_path not in shadowed:
                    changed["shadow_replicas"] = sorted([*shadowed, socket_path])
            elif socket_path in {s for sockets in changed.get("replicas", {}).values() for s in sockets} | set(
                    changed.get("shadow_replicas") or []):
                down.add(socket_path)
            changed["down"] = sorted(down)
            if changed == state:
                return False
            self._render(model, changed)
            self._save_state(model, changed)
            return True
