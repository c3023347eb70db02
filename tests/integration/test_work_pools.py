"""The Prefect work pools `stack up` keeps: created from modelyard's templates, kept when
unchanged, updated when a template changes — on the real Prefect server (the templates
themselves are checked against Prefect's own validation in tests/unit/test_kubernetes.py)."""

from __future__ import annotations

import json

import pytest

from modelyard.work_pools import load_base_job_template

pytestmark = pytest.mark.stack


def test_ensure_work_pools_creates_then_keeps_then_updates_the_pools(stack_env, tmp_path):
    from tests.support.stacks import prefect_client

    from modelyard.work_pools import ensure_work_pools

    settings = stack_env.settings
    with prefect_client(settings) as client:
        first = ensure_work_pools(client, settings)
        assert set(first) == {settings.work_pool, "docker", "gpu"}
        # `stack up` created the process pool already, with Prefect's default template: the same.
        assert first[settings.work_pool] == "unchanged"
        assert {first["docker"], first["gpu"]} <= {"created", "unchanged"}
        for name, kind, pool_type in [(settings.work_pool, "local", "process"), ("docker", "docker", "docker"),
                                      ("gpu", "gpu", "kubernetes")]:
            pool = client.read_work_pool(name)
            assert pool.type == pool_type and pool.base_job_template == load_base_job_template(kind)
        assert set(ensure_work_pools(client, settings).values()) == {"unchanged"}

        edited = tmp_path / "work-pools"
        edited.mkdir()
        for kind in ("local", "docker", "gpu"):
            template = load_base_job_template(kind)
            if kind == "gpu":
                template["variables"]["properties"]["gpu_count"]["default"] = 8
            (edited / f"{kind}.json").write_text(json.dumps(template))
        assert ensure_work_pools(client, settings, edited)["gpu"] == "updated"
        assert client.read_work_pool("gpu").base_job_template["variables"]["properties"]["gpu_count"]["default"] == 8
        assert ensure_work_pools(client, settings)["gpu"] == "updated"
        assert client.read_work_pool("gpu").base_job_template == load_base_job_template("gpu")
