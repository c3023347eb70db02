"""Resource utilisation of serving replicas, sampled: CPU and memory of each replica's process
(local target: its supervisord program's pid and children, via psutil; docker target: the
container's stats from the Docker Engine), and the GPUs through ``nvidia-smi`` where it exists.

The watchdog samples every 30 s into a bounded JSON-lines file under the state dir; the KPI
view and ``/metrics`` read the recent samples. Nothing is estimated: a replica whose process
cannot be read is left out, the first CPU reading of a process (which has no interval yet) is
None, and without ``nvidia-smi`` the answer is "no GPU".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelyard.resources.serving_state import ServingState
from modelyard.settings import Settings

SAMPLE_EVERY_S = 30.0
MAX_BYTES = 4 * 1024 * 1024  # the file is rotated to <name>.1 past this: at most twice this on disk
RECENT_S = 15 * 60.0  # what the KPI view summarises
NVIDIA_SMI_TIMEOUT_S = 10.0
GPU_QUERY = "index,name,utilization.gpu,memory.used,memory.total"
MB = 1024 * 1024


def samples_path(settings: Settings) -> Path:
    return settings.state_dir / "metrics" / "utilisation.jsonl"


# --- GPUs -----------------------------------------------------------------------------------

def _nvidia_smi(args: list[str]) -> str | None:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_gpu_csv(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=<GPU_QUERY> --format=csv,noheader,nounits`` as one dict per GPU."""
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5:
            continue
        index, name, util, used, total = fields
        gpus.append({"index": index, "name": name, "utilization_percent": _number(util),
                     "memory_used_mb": _number(used), "memory_total_mb": _number(total)})
    return gpus


def parse_gpu_apps_csv(text: str) -> dict[int, float]:
    """``nvidia-smi --query-compute-apps=pid,used_gpu_memory --format=csv,noheader,nounits``: pid → MB."""
    used: dict[int, float] = {}
    for line in text.strip().splitlines():
        pid, _, memory = (f.strip() for f in line.partition(","))
        if pid.isdigit() and _number(memory) is not None:
            used[int(pid)] = used.get(int(pid), 0.0) + float(memory)
    return used


def gpu_snapshot() -> dict[str, Any]:
    """The GPUs now, with the GPU memory each process uses; ``available`` False (and why) when
    there is no ``nvidia-smi`` or it fails."""
    try:
        text = _nvidia_smi([f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"])
        if text is None:
            return {"available": False, "reason": "no GPU (nvidia-smi not found)", "gpus": [], "processes": {}}
        apps = _nvidia_smi(["--query-compute-apps=pid,used_gpu_memory", "--format=csv,noheader,nounits"]) or ""
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        return {"available": False, "reason": f"nvidia-smi failed: {error}", "gpus": [], "processes": {}}
    return {"available": True, "reason": None, "gpus": parse_gpu_csv(text), "processes": parse_gpu_apps_csv(apps)}


# --- replicas -------------------------------------------------------------------------------

def docker_cpu_percent(stats: dict[str, Any]) -> float | None:
    """CPU % of a container from one ``stats(stream=False)`` answer (Docker's own formula:
    container CPU delta over system CPU delta, times the CPUs online)."""
    cpu, pre = stats.get("cpu_stats", {}), stats.get("precpu_stats", {})
    try:
        delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except (KeyError, TypeError):
        return None
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
    return delta / system * online * 100.0 if system > 0 else None


class Sampler:
    """Samples the replicas every running version recorded (``ServingState.replicas``). Keeps the
    psutil processes between calls: a CPU percentage is measured since the previous call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serving = ServingState(settings.state_dir)
        self._processes: dict[int, Any] = {}
        self._docker = None

    def replicas(self) -> list[dict[str, Any]]:
        """Every recorded replica: model, version, index, target, handle."""
        return [{"model": model, "version": version, "replica": replica["index"], "target": record["target"],
                 "handle": replica["handle"]}
                for model in self.serving.replicated_models()
                for version, record in sorted(self.serving.replicas(model).items())
                for replica in record["replicas"]]

    def _process_sample(self, pid: int) -> dict[str, Any] | None:
        """CPU % (None on first sight) and RSS of a process with its children."""
        import psutil

        try:
            root = self._processes.get(pid) or psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
            first = any(process.pid not in self._processes for process in family)
            cpu = 0.0
            rss = 0
            for process in family:
                known = self._processes.setdefault(process.pid, process)
                cpu += known.cpu_percent(None)
                rss += known.memory_info().rss
            return {"pid": pid, "processes": len(family), "cpu_percent": None if first else round(cpu, 2),
                    "rss_mb": round(rss / MB, 2)}
        except psutil.Error:
            self._processes.pop(pid, None)
            return None

    def _local(self, replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from modelyard.processes import stack_supervisor

        infos = stack_supervisor(self.settings).processes()
        out = []
        for replica in replicas:
            info = infos.get(replica["handle"])
            if info is None or info.pid is None or info.state not in {"STARTING", "RUNNING"}:
                continue
            sample = self._process_sample(info.pid)
            if sample is not None:
                out.append(replica | sample)
        return out

    def _docker_samples(self, replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import docker
        import docker.errors

        if self._docker is None:
            self._docker = docker.from_env(timeout=10)
        out = []
        for replica in replicas:
            try:
                container = self._docker.containers.get(replica["handle"])
                stats = container.stats(stream=False)
            except docker.errors.DockerException:
                continue
            memory = stats.get("memory_stats", {})
            usage = memory.get("usage")
            cache = (memory.get("stats") or {}).get("inactive_file", 0)
            out.append(replica | {"pid": container.attrs.get("State", {}).get("Pid"), "processes": None,
                                  "cpu_percent": docker_cpu_percent(stats),
                                  "rss_mb": round((usage - cache) / MB, 2) if usage is not None else None})
        return out

    def sample(self, now: float | None = None) -> dict[str, Any]:
        """One sample of every replica now, and of the GPUs."""
        now = time.time() if now is None else now
        replicas = self.replicas()
        samples = self._local([r for r in replicas if r["target"] == "local"])
        docker_replicas = [r for r in replicas if r["target"] == "docker"]
        errors = []
        if docker_replicas:  # only when the docker target is used: no Engine needed otherwise
            try:
                samples += self._docker_samples(docker_replicas)
            except Exception as error:  # noqa: BLE001 - an Engine that does not answer: say so, keep the rest
                errors.append(f"docker: {error}")
                self._docker = None
        gpu = gpu_snapshot()
        for sample in samples:
            used = gpu["processes"].get(sample.get("pid") or -1)
            sample["gpu_memory_mb"] = used
            sample["at"] = now
        alive = {s["pid"] for s in samples}
        self._processes = {pid: p for pid, p in self._processes.items() if pid in alive or _is_child(p, alive)}
        return {"at": now, "replicas": samples, "gpu": {k: gpu[k] for k in ("available", "reason", "gpus")},
                "errors": errors}


def _is_child(process, roots: set[int]) -> bool:
    import psutil

    try:
        return any(parent.pid in roots for parent in process.parents())
    except psutil.Error:
        return False


# --- the bounded file -------------------------------------------------------------------------

def append_sample(path: Path, sample: dict[str, Any], max_bytes: int = MAX_BYTES) -> None:
    """Append one sample as a JSON line; past ``max_bytes`` the file becomes ``<name>.1`` (the
    older one dropped), so at most about twice ``max_bytes`` stay on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(sample, separators=(",", ":")) + "\n"
    try:
        if path.stat().st_size + len(line) > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)


def read_samples(path: Path, since: float) -> list[dict[str, Any]]:
    """Samples taken at or after ``since``, oldest first (the rotated file first); a torn line is skipped."""
    out = []
    for part in (path.with_name(path.name + ".1"), path):
        try:
            lines = part.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                sample = json.loads(line)
            except ValueError:
                continue
            if isinstance(sample, dict) and sample.get("at", 0) >= since:
                out.append(sample)
    return sorted(out, key=lambda s: s["at"])


def _stats(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    return (round(sum(present) / len(present), 2), round(max(present), 2)) if present else (None, None)


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per replica (model, version, index): samples, mean and max CPU %, mean, max and last RSS
    MB, its pid now; and the GPUs as the latest sample saw them."""
    replicas: dict[tuple, list[dict[str, Any]]] = {}
    for sample in samples:
        for replica in sample.get("replicas", []):
            replicas.setdefault((replica["model"], replica["version"], replica["replica"]), []).append(replica)
    rows = []
    for (model, version, index), seen in sorted(replicas.items()):
        cpu_mean, cpu_max = _stats(s.get("cpu_percent") for s in seen)
        rss_mean, rss_max = _stats(s.get("rss_mb") for s in seen)
        last = seen[-1]
        rows.append({"model": model, "version": version, "replica": index, "target": last["target"],
                     "pid": last.get("pid"), "samples": len(seen), "cpu_percent_mean": cpu_mean,
                     "cpu_percent_max": cpu_max, "rss_mb_mean": rss_mean, "rss_mb_max": rss_max,
                     "rss_mb_last": last.get("rss_mb"), "gpu_memory_mb": last.get("gpu_memory_mb"),
                     "last_at": last["at"], "current": bool(samples) and last["at"] == samples[-1]["at"]})
    gpu = samples[-1]["gpu"] if samples else {"available": False, "reason": "no sample yet", "gpus": []}
    return {"replicas": rows, "gpu": gpu, "samples": len(samples),
            "since": samples[0]["at"] if samples else None}


def recent_utilisation(settings: Settings, window_s: float = RECENT_S, now: float | None = None) -> dict[str, Any]:
    """The summary of the samples of the last ``window_s``."""
    now = time.time() if now is None else now
    return summarise(read_samples(samples_path(settings), now - window_s)) | {"window_s": window_s}
