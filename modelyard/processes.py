"""One supervisord per stack runs every long-running process: servers, worker, bridge, watchdog
and serving replicas, each a program with a restart policy and back-off, its log under
``logs/``. Programs are added and removed at run time (one include file each, then
``reloadConfig`` + ``addProcessGroup``, as ``supervisorctl update`` does), over XML-RPC on the
supervisor's unix socket under the state dir.

supervisord's own environment holds no secret (every program and serving replica inherits it);
each program gets the secrets it needs, and only those, in its include file's ``environment``
(0600, in a 0700 directory), never on its command line. supervisord's pid file holds only its
pid and is readable by the owner alone.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path

import psutil
from supervisor.xmlrpc import Faults, SupervisorTransport

from modelyard.settings import Settings

# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
MAX_SOCKET_PATH = 104
# supervisord's process states (supervisor.states.ProcessStates), by name.
ALIVE_STATES = frozenset({"STARTING", "RUNNING", "BACKOFF"})
EXITED_STATES = frozenset({"BACKOFF", "EXITED", "FATAL"})
# The event listener every stack's supervisord runs (modelyard.group_reaper).
GROUP_REAPER = "group-reaper"


class SupervisorError(RuntimeError):
    """supervisord could not be started, reached or asked; the message says which and why."""


@dataclass(frozen=True)
class Program:
    """A supervised program: what runs, where, and how it is restarted and stopped.

    ``priority`` orders start (low first) and shutdown (high first). A process that exits within
    ``startsecs`` of its start is retried ``startretries`` times with a growing back-off (1 s,
    2 s, …); one that exits later is restarted at once."""

    name: str
    command: Sequence[str]
    directory: Path
    environment: Mapping[str, str] = field(default_factory=dict)
    priority: int = 500
    startsecs: int = 3
    startretries: int = 5
    stopwaitsecs: int = 15


def _escape(text: str) -> str:
    """supervisord expands ``%(name)s`` in commands and environments: a literal ``%`` is ``%%``."""
    return text.replace("%", "%%")


def render_program(program: Program, log_path: Path) -> str:
    """The include file of one program (supervisord's ini syntax)."""
    if any(c in program.name for c in ":[]% \n"):
        raise ValueError(f"{program.name!r} cannot name a supervisord program")
    lines = [
        f"[program:{program.name}]",
        f"command={_escape(shlex.join(str(part) for part in program.command))}",
        f"directory={_escape(str(program.directory))}",
        f"priority={program.priority}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={program.startsecs}",
        f"startretries={program.startretries}",
        "stopsignal=TERM",
        f"stopwaitsecs={program.stopwaitsecs}",
        # The whole process group: a server's children go with it, as they did before.
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={_escape(str(log_path))}",
        "stdout_logfile_maxbytes=0",
    ]
    if program.environment:
        for key, value in program.environment.items():
            if not key.isidentifier() or any(c in value for c in "\"\n"):
                raise ValueError(f"{key}={value!r} cannot go into a supervisord environment line")
        pairs = ",".join(f'{key}="{_escape(value)}"' for key, value in program.environment.items())
        lines.append(f"environment={pairs}")
    return "\n".join(lines) + "\n"


def render_supervisord_conf(socket_path: Path, pid_file: Path, log_file: Path, programs_dir: Path,
                            directory: Path, python: str = sys.executable) -> str:
    """supervisord's own configuration: its socket (owner only), log, pid file, include dir, and
    the group reaper (``modelyard.group_reaper``), which kills the orphans of a program whose
    main process died by itself so that its restart finds its port free."""
    reaper = _escape(shlex.join([python, "-m", "modelyard.group_reaper"]))
    reaper_log = _escape(str(log_file.with_name(f"{GROUP_REAPER}.log")))
    return f"""; rendered by modelyard; do not edit. Programs: one file each in {programs_dir}.
[unix_http_server]
file={_escape(str(socket_path))}
chmod=0700

[supervisord]
logfile={_escape(str(log_file))}
logfile_maxbytes=10MB
logfile_backups=2
pidfile={_escape(str(pid_file))}
directory={_escape(str(directory))}
identifier=modelyard
nocleanup=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[eventlistener:{GROUP_REAPER}]
command={reaper}
events=PROCESS_STATE_EXITED
priority=1
autorestart=true
stderr_logfile={reaper_log}
stderr_logfile_maxbytes=1MB

[include]
files = {_escape(str(programs_dir))}/*.conf
"""


@dataclass(frozen=True)
class ProcessInfo:
    """One program as supervisord sees it now."""

    name: str
    state: str
    pid: int | None
    started: float
    exit_status: int
    description: str

    @classmethod
    def of(cls, info: Mapping) -> ProcessInfo:
        return cls(info["name"], info["statename"], info["pid"] or None, float(info["start"]),
                   int(info["exitstatus"]), info.get("description", ""))

    @property
    def alive(self) -> bool:
        """Running, starting, or waiting to be started again (a restart in back-off)."""
        return self.state in ALIVE_STATES

    def process(self) -> psutil.Process | None:
        """The live OS process (None if supervisord has none, or it is gone)."""
        if self.pid is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            return None if proc.status() == psutil.STATUS_ZOMBIE else proc
        except psutil.Error:
            return None


class _UnixConnection(HTTPConnection):
    """supervisor's unix-socket connection, with a timeout (a hung supervisord never hangs us)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class _Transport(SupervisorTransport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(serverurl=f"unix://{path}")
        self._get_connection = lambda: _UnixConnection(path, timeout)


class Supervisor:
    """The supervisord of one stack, living in ``root`` and logging to ``logs_dir``."""

    def __init__(self, root: Path, logs_dir: Path) -> None:
        self.root = root
        self.logs_dir = logs_dir
        self.programs_dir = root / "programs"
        self.conf = root / "supervisord.conf"
        self.socket = root / "supervisor.sock"
        self.pid_file = root / "supervisord.pid"
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise SupervisorError(f"socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes: "
                                  "use a shorter MODELYARD_STATE_DIR")

    # -- the supervisord process ------------------------------------------------------------

    def _rpc(self, timeout: float = 10.0):
        return xmlrpc.client.ServerProxy("http://localhost", transport=_Transport(str(self.socket), timeout)).supervisor

    def pid(self) -> int | None:
        """supervisord's pid, if it runs and answers."""
        try:
            return int(self._rpc(2.0).getPID())
        except (OSError, xmlrpc.client.Error):
            return None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, env: Mapping[str, str], timeout_s: float = 15.0) -> bool:
        """Start supervisord (daemonized, its own session) with ``env``, which every program
        inherits (so: no secrets); True if it was started, False if it already ran. It starts with no programs:
        include files left by an earlier supervisord name nothing that runs now."""
        if self.running():
            return False
        for directory in (self.root, self.programs_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
        for stale in self.programs_dir.glob("*.conf"):
            stale.unlink()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_supervisord_conf(self.socket, self.pid_file, self.logs_dir / "supervisord.log",
                                                     self.programs_dir, self.root))
        binary = Path(sys.executable).parent / "supervisord"
        result = subprocess.run([str(binary) if binary.exists() else "supervisord", "-c", str(self.conf)],
                                env=dict(env), capture_output=True, text=True, timeout=timeout_s, cwd=self.root,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise SupervisorError(f"supervisord did not start: {(result.stdout + result.stderr).strip()[-2000:]}")
        deadline = time.monotonic() + timeout_s
        while not self.running():
            if time.monotonic() > deadline:
                raise SupervisorError(f"supervisord did not answer on {self.socket} within {timeout_s:.0f} s; "
                                      f"its log: {self.logs_dir / 'supervisord.log'}")
            time.sleep(0.05)
        if self.pid_file.exists():
            self.pid_file.chmod(0o600)  # written with supervisord's umask (022)
        return True

    def shutdown(self, timeout_s: float = 120.0) -> list[str]:
        """Stop every program (highest priority first) and supervisord itself; the names of the
        programs that were alive."""
        pid = self.pid()
        if pid is None:
            return []
        alive = [info.name for info in self.processes().values() if info.alive and info.name != GROUP_REAPER]
        try:
            self._rpc().shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        try:
            psutil.Process(pid).wait(timeout=timeout_s)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired as error:
            raise SupervisorError(f"supervisord (pid {pid}) did not stop within {timeout_s:.0f} s") from error
        return alive

    # -- programs ---------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _program_file(self, name: str) -> Path:
        return self.programs_dir / f"{name}.conf"

    @contextmanager
    def _config_lock(self) -> Iterator[None]:
        """Include files and reloads, one process at a time (targets, the CLI and the watchdog
        may change programs at once)."""
        with open(self.root / "programs.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure(self, program: Program) -> ProcessInfo:
        """``program`` configured and alive: added (started) if new, restarted if its
        configuration changed, started again if it had stopped or given up; left alone otherwise."""
        text = render_program(program, self.log_path(program.name))
        path = self._program_file(program.name)
        with self._config_lock():
            if not path.exists() or path.read_text() != text:
                staged = path.with_name(f".{path.name}.tmp")
                staged.write_text(text)
                staged.chmod(0o600)
                os.replace(staged, path)
            rpc = self._rpc(timeout=60)
            added, changed, _ = rpc.reloadConfig()[0]
            if program.name in changed:
                rpc.stopProcessGroup(program.name)
                rpc.removeProcessGroup(program.name)
                added = [program.name]
            if program.name in added:
                _tolerate(lambda: rpc.addProcessGroup(program.name), Faults.ALREADY_ADDED)
        info = self.info(program.name)
        if info is not None and info.state in {"STOPPED", "EXITED", "FATAL"}:
            self.start_process(program.name)
            info = self.info(program.name)
        if info is None:
            raise SupervisorError(f"supervisord does not know {program.name} after adding it")
        return info

    def remove(self, name: str) -> bool:
        """Stop ``name`` (gracefully, then killed after its stop wait) and forget it; True if it
        was alive."""
        with self._config_lock():
            self._program_file(name).unlink(missing_ok=True)
        info = self.info(name)
        if info is None:
            return False
        rpc = self._rpc(timeout=120)
        _tolerate(lambda: rpc.stopProcessGroup(name), Faults.BAD_NAME)
        _tolerate(lambda: rpc.removeProcessGroup(name), Faults.BAD_NAME)
        return info.alive

    def stop(self, name: str) -> bool:
        """Stop ``name`` but keep it configured (``ensure`` starts it again); True if it was alive."""
        info = self.info(name)
        if info is None or not info.alive:
            return False
        _tolerate(lambda: self._rpc(timeout=120).stopProcess(name), Faults.NOT_RUNNING, Faults.BAD_NAME)
        return True

    def start_process(self, name: str) -> None:
        """Start ``name`` without waiting for it (a program that had stopped or given up)."""
        _tolerate(lambda: self._rpc().startProcess(name, False), Faults.ALREADY_STARTED, Faults.BAD_NAME,
                  Faults.SPAWN_ERROR)

    def kill(self, name: str) -> bool:
        """SIGKILL ``name`` now (a stopped or hung process is never waited on); supervisord then
        restarts it by its policy. False if it was not running."""
        try:
            return bool(self._rpc().signalProcess(name, "KILL"))
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in (Faults.NOT_RUNNING, Faults.BAD_NAME):
                return False
            raise

    def info(self, name: str) -> ProcessInfo | None:
        """``name`` as supervisord sees it; None if it is not configured or supervisord is down."""
        try:
            return ProcessInfo.of(self._rpc().getProcessInfo(name))
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.BAD_NAME:
                return None
            raise
        except OSError:
            return None

    def alive(self, name: str) -> ProcessInfo | None:
        info = self.info(name)
        return info if info is not None and info.alive else None

    def processes(self) -> dict[str, ProcessInfo]:
        """Every program supervisord runs, by name (empty when it is down)."""
        try:
            return {info["name"]: ProcessInfo.of(info) for info in self._rpc().getAllProcessInfo()}
        except OSError:
            return {}


def _tolerate(call, *codes: int):
    """``call()``, where a fault with one of ``codes`` means the wanted state already holds."""
    try:
        return call()
    except xmlrpc.client.Fault as fault:
        if fault.faultCode not in codes:
            raise SupervisorError(f"supervisord: {fault.faultString}") from fault
        return None


def stack_supervisor(settings: Settings) -> Supervisor:
    """The supervisord of the stack ``settings`` describes."""
    return Supervisor(settings.run_dir / "supervisor", settings.logs_dir)


def port_in_use(host: str, port: int) -> bool:
    """True if something already accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
