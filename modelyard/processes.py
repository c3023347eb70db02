"""Start, find and stop the stack's long-running processes: each in its own session with a log
file, remembered in a pid file with its start time so that a reused pid is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    create_time: float
    command: list[str]
    log_path: str

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None if it is gone or the pid was reused."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


class ProcessTable:
    """The pid files of one stack's processes, under ``run_dir``."""

    def __init__(self, run_dir: Path, logs_dir: Path) -> None:
        self.run_dir = run_dir
        self.logs_dir = logs_dir

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid.json"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def read(self, name: str) -> ProcessRecord | None:
        try:
            return ProcessRecord(**json.loads(self._pid_path(name).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def alive(self, name: str) -> ProcessRecord | None:
        record = self.read(name)
        return record if record and record.process() else None

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
    ) -> ProcessRecord:
        """Start ``command`` detached, logging to ``logs/<name>.log``, and remember it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name)
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(command),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record = ProcessRecord(
            name=name,
            pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(),
            command=list(command),
            log_path=str(log_path),
        )
        self._pid_path(name).write_text(json.dumps(record.__dict__))
        return record

    def exit_code(self, record: ProcessRecord) -> int | None:
        """The exit code of a process we started, if it has exited (reaping it)."""
        try:
            pid, status = os.waitpid(record.pid, os.WNOHANG)
        except ChildProcessError:
            return None if record.process() else -1
        if pid == 0:
            return None
        return os.waitstatus_to_exitcode(status)

    def stop(self, name: str, timeout_s: float = 15.0) -> bool:
        """Stop the named process and every descendant; True if something was running."""
        record = self.read(name)
        proc = record.process() if record else None
        stopped = False
        if proc is not None:
            family = [proc] + _descendants(proc)
            _signal_all(family, signal.SIGTERM, record.pid)
            _, still_alive = psutil.wait_procs(family, timeout=timeout_s)
            if still_alive:
                _signal_all(still_alive, signal.SIGKILL, None)
                psutil.wait_procs(still_alive, timeout=5)
            stopped = True
        self._pid_path(name).unlink(missing_ok=True)
        return stopped

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(procs: list[psutil.Process], sig: int, group_leader: int | None) -> None:
    if group_leader is not None:
        try:
            os.killpg(group_leader, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def port_in_use(host: str, port: int) -> bool:
    """True if something already accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
