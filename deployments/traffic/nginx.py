"""nginx on loopback as each model's stable endpoint.

Every model gets a server block on its own port whose upstream lists the versions with
weights; a switch rewrites the block and runs ``nginx -s reload``, which starts new workers
on the new configuration while old workers finish their in-flight requests — an atomic
switch that keeps connections.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from modelyard.settings import Settings


class TrafficError(RuntimeError):
    pass


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def render_model_conf(model: str, listen_host: str, listen_port: int, backends: dict[int, int]) -> str:
    """The server block of one model: ``backends`` maps a version's port to its weight (> 0)."""
    if not backends or any(weight <= 0 for weight in backends.values()):
        raise ValueError("every backend needs a positive weight")
    servers = "\n".join(f"    server 127.0.0.1:{port} weight={weight} max_fails=0;" for port, weight in backends.items())
    upstream = f"model_{_safe(model)}"
    return f"""# {model}: rendered by modelyard; do not edit
upstream {upstream} {{
{servers}
    keepalive 32;
}}
server {{
    listen {listen_host}:{listen_port};
    client_max_body_size 16m;
    location / {{
        proxy_pass http://{upstream};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries 2;
    }}
}}
"""


class NginxRouter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "nginx"
        self.models_dir = self.root / "models"
        self.main_conf = self.root / "nginx.conf"
        self.pid_file = self.root / "nginx.pid"
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    def _write_main(self) -> None:
        for sub in ("models", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp"
        self.main_conf.write_text(f"""worker_processes 1;
pid {self.pid_file};
error_log {self.settings.logs_dir / 'nginx-error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {self.models_dir}/*.conf;
}}
""")

    def running(self) -> bool:
        try:
            pid = int(self.pid_file.read_text().strip())
            Path(f"/proc/{pid}").stat()
            return True
        except (FileNotFoundError, ValueError):
            return False

    def _nginx(self, *args: str) -> None:
        result = subprocess.run([self.binary, "-c", str(self.main_conf), "-p", str(self.root), *args],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise TrafficError(f"nginx {' '.join(args)} failed: {result.stderr.strip()}")

    def state(self, model: str) -> dict:
        try:
            return json.loads((self.models_dir / f"{model}.json").read_text())
        except FileNotFoundError:
            return {}

    def stable_port(self, model: str) -> int:
        port = self.state(model).get("port")
        if port:
            return int(port)
        with socket.socket() as sock:
            sock.bind((self.settings.host, 0))
            return sock.getsockname()[1]

    def route(self, model: str, backends: dict[int, int], versions: dict[int, str]) -> str:
        """Send ``model``'s traffic to ``backends`` (port → weight); returns the stable URL."""
        self._write_main()
        port = self.stable_port(model)
        conf = self.models_dir / f"{model}.conf"
        conf.write_text(render_model_conf(model, self.settings.host, port, backends))
        (self.models_dir / f"{model}.json").write_text(json.dumps({
            "port": port, "backends": {str(p): w for p, w in backends.items()},
            "versions": {str(p): v for p, v in versions.items()}, "changed_at": time.time()}))
        self._nginx("-t")
        if self.running():
            self._nginx("-s", "reload")
        else:
            self._nginx()
        return f"http://{self.settings.host}:{port}"

    def stop(self) -> None:
        if self.running():
            self._nginx("-s", "quit")
