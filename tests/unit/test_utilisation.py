"""Resource utilisation of serving replicas: a real process's CPU and memory as psutil reads
them, Docker's CPU formula, nvidia-smi's CSV, and the bounded sample file the watchdog keeps."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from modelyard.utilisation import (
    Sampler, append_sample, docker_cpu_percent, gpu_snapshot, parse_gpu_apps_csv, parse_gpu_csv, read_samples,
    summarise,
)
from tests.support.stacks import make_settings


@pytest.fixture
def busy_process():
    """A real process that burns CPU and holds ~50 MB."""
    process = subprocess.Popen([sys.executable, "-c", "b = bytearray(50 * 1024 * 1024)\nwhile True: pass"])
    yield process
    process.kill()
    process.wait(10)


def test_process_sample_reads_cpu_and_rss_of_a_real_process(tmp_path, busy_process):
    sampler = Sampler(make_settings(tmp_path / "state"))
    time.sleep(0.5)  # let it allocate
    first = sampler._process_sample(busy_process.pid)
    assert first["pid"] == busy_process.pid and first["cpu_percent"] is None  # no interval yet: unknown, not 0
    time.sleep(0.5)
    second = sampler._process_sample(busy_process.pid)
    assert second["cpu_percent"] > 20  # a busy loop: most of one core
    assert second["rss_mb"] > 50


def test_a_gone_process_gives_no_sample(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(10)
    assert Sampler(make_settings(tmp_path / "state"))._process_sample(process.pid) is None


def test_docker_cpu_percent_follows_dockers_formula():
    stats = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000}, "system_cpu_usage": 20_000, "online_cpus": 4},
             "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000}}
    assert docker_cpu_percent(stats) == pytest.approx(80.0)  # 2k of 10k system ticks × 4 CPUs
    assert docker_cpu_percent({"cpu_stats": {}, "precpu_stats": {}}) is None  # the first read of a container


def test_nvidia_smi_csv_is_parsed_and_unsupported_fields_are_none():
    text = "0, NVIDIA H200, 37, 1024, 143771\n1, NVIDIA H200, [N/A], 0, 143771\n"
    gpus = parse_gpu_csv(text)
    assert gpus[0] == {"index": "0", "name": "NVIDIA H200", "utilization_percent": 37.0, "memory_used_mb": 1024.0,
                       "memory_total_mb": 143771.0}
    assert gpus[1]["utilization_percent"] is None
    assert parse_gpu_apps_csv("4242, 512\n4242, 256\n77, [N/A]\n") == {4242: 768.0}


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi")
def test_without_nvidia_smi_there_is_no_gpu_and_no_number():
    snapshot = gpu_snapshot()
    assert snapshot["available"] is False and "no GPU" in snapshot["reason"] and snapshot["gpus"] == []


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no nvidia-smi on this host")
def test_nvidia_smi_reports_every_gpu_it_sees():
    snapshot = gpu_snapshot()
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    assert snapshot["available"] and len(snapshot["gpus"]) == listed.count("GPU ")
    assert all(g["memory_total_mb"] and g["memory_total_mb"] > 0 for g in snapshot["gpus"])


def _sample(at: float, cpu: float | None, rss: float, pid: int = 10) -> dict:
    return {"at": at, "gpu": {"available": False, "reason": "no GPU", "gpus": []}, "errors": [],
            "replicas": [{"model": "m", "version": "1", "replica": 0, "target": "local", "handle": "m-1-0",
                          "pid": pid, "cpu_percent": cpu, "rss_mb": rss, "gpu_memory_mb": None, "at": at}]}


def test_sample_file_is_bounded_and_rotated(tmp_path):
    path = tmp_path / "metrics" / "utilisation.jsonl"
    line = len(json.dumps(_sample(0, 1.0, 2.0), separators=(",", ":"))) + 1
    for i in range(10):
        append_sample(path, _sample(i, 1.0, 2.0), max_bytes=line * 4)
    rotated = path.with_name("utilisation.jsonl.1")
    assert path.stat().st_size <= line * 4 and rotated.stat().st_size <= line * 4
    kept = read_samples(path, since=0)
    assert [s["at"] for s in kept] == list(range(10 - len(kept), 10)) and len(kept) >= 4  # the newest, in order
    assert [s["at"] for s in read_samples(path, since=8)] == [8, 9]


def test_torn_line_is_skipped(tmp_path):
    path = tmp_path / "u.jsonl"
    append_sample(path, _sample(1, 1.0, 2.0))
    with open(path, "a") as handle:
        handle.write('{"at": 2, "repl')
    assert [s["at"] for s in read_samples(path, since=0)] == [1]


def test_summary_gives_mean_and_max_per_replica_and_ignores_unknown_cpu():
    summary = summarise([_sample(1, None, 100.0), _sample(2, 10.0, 120.0), _sample(3, 30.0, 110.0, pid=11)])
    (row,) = summary["replicas"]
    assert row["samples"] == 3 and row["cpu_percent_mean"] == 20.0 and row["cpu_percent_max"] == 30.0
    assert row["rss_mb_mean"] == 110.0 and row["rss_mb_max"] == 120.0 and row["rss_mb_last"] == 110.0
    assert row["pid"] == 11 and row["current"]  # the replica restarted: its pid now
