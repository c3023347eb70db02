"""Prefect work pools: where flow runs execute (``local`` process, ``docker``, ``gpu`` on
Kubernetes), declared as base job templates in ``infra/work-pools/`` and kept in step with the
Prefect server. Why each pool exists: docs/architecture.md."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelyard.catalog import PIPELINE_DEPLOYMENT, PIPELINE_GPU_DEPLOYMENT
from modelyard.settings import PROJECT_DIR, Settings
from modelyard.spec import ModelSpec

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

PoolKind = Literal["local", "docker", "gpu"]
TEMPLATES_DIR = PROJECT_DIR / "infra" / "work-pools"
DOCKER_POOL = "docker"
GPU_POOL = "gpu"
POOL_TYPES: dict[PoolKind, str] = {"local": "process", "docker": "docker", "gpu": "kubernetes"}


def load_base_job_template(kind: PoolKind, directory: Path = TEMPLATES_DIR) -> dict[str, Any]:
    """The base job template of one pool kind, as checked in under ``infra/work-pools/``."""
    if kind not in POOL_TYPES:
        raise ValueError(f"unknown work pool kind {kind!r}; expected one of {', '.join(POOL_TYPES)}")
    return json.loads((directory / f"{kind}.json").read_text())


def variable_values(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values a worker templates with: the variables' non-null defaults, overridden by
    ``values`` (dotted keys such as ``env.FOO`` nest), as Prefect's
    ``BaseJobConfiguration.from_template_and_values`` merges them."""
    from prefect.utilities.collections import deep_merge, set_in_dict

    merged = {name: attrs["default"] for name, attrs in template["variables"].get("properties", {}).items()
              if attrs.get("default") is not None}
    overrides: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if "." in key:
            set_in_dict(overrides, key, value)
    for key, value in (values or {}).items():
        if "." not in key:
            if isinstance(overrides.get(key), dict) and isinstance(value, dict):
                overrides[key] = deep_merge(overrides[key], value)
            else:
                overrides[key] = value
    merged.update(overrides)
    return merged


def render_job_configuration(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job configuration a worker builds for a flow run with these job variables:
    placeholders replaced by Prefect's own ``apply_values``, unset ones dropped."""
    from prefect.utilities.templating import apply_values

    configuration = copy.deepcopy(template["job_configuration"])
    variables = variable_values(template, values)
    if isinstance(configuration.get("env"), dict) and variables.get("env"):
        configuration["env"] = configuration["env"] | variables["env"]
    return apply_values(configuration, variables)


def render_job_manifest(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Kubernetes Job manifest of a ``kubernetes``-type template for these job variables."""
    configuration = render_job_configuration(template, values)
    if "job_manifest" not in configuration:
        raise ValueError("this base job template has no job_manifest (not a kubernetes pool)")
    return configuration["job_manifest"]


def pool_names(settings: Settings) -> dict[PoolKind, str]:
    return {"local": settings.work_pool, "docker": DOCKER_POOL, "gpu": GPU_POOL}


def ensure_work_pools(client: SyncPrefectClient, settings: Settings,
                      directory: Path = TEMPLATES_DIR) -> dict[str, str]:
    """Create each pool that is missing and update the base job template of each whose template
    differs; returns ``{pool: "created" | "updated" | "unchanged"}``. A pool of the same name but
    another type is an error: it would run flows somewhere nobody asked for."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    outcome: dict[str, str] = {}
    for kind, name in pool_names(settings).items():
        template = load_base_job_template(kind, directory)
        pool_type = POOL_TYPES[kind]
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
            outcome[name] = "created"
            continue
        if pool.type != pool_type:
            raise ValueError(f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}; "
                             f"delete it or choose another name")
        if pool.base_job_template != template:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            outcome[name] = "updated"
        else:
            outcome[name] = "unchanged"
    return outcome


def work_pool_for(spec: ModelSpec, settings: Settings) -> str:
    """The pool a model's flow runs belong in: GPU models on ``gpu`` (a Kubernetes Job on a GPU
    node), everything else on the local process pool. Where a model *serves* (docker, local)
    does not move its training: the ``docker`` pool is for running flows themselves in
    containers, chosen per deployment."""
    if spec.serving.gpu:
        return GPU_POOL
    return settings.work_pool


def pipeline_deployment_for(spec: ModelSpec, settings: Settings) -> str:
    """The Prefect deployment that runs ``spec``'s pipeline on its pool (see prefect.yaml)."""
    return PIPELINE_GPU_DEPLOYMENT if work_pool_for(spec, settings) == GPU_POOL else PIPELINE_DEPLOYMENT
