"""The target a spec names, behind the one Target interface."""

from __future__ import annotations

from deployments.targets.base import Target, TargetError
from modelyard.settings import Settings


def make_target(settings: Settings, kind: str) -> Target:
    if kind == "local":
        from deployments.targets.local import LocalTarget

        return LocalTarget(settings)
    if kind == "docker":
        from deployments.targets.docker import DockerTarget

        return DockerTarget(settings)
    if kind == "kubernetes":
        from deployments.targets.kubernetes import KubernetesTarget
        from modelyard.catalog import CHAMPION
        from modelyard.resources import get_resources
        from modelyard.resources.registry import version_spec

        def spec_of(model: str):
            """The spec of the model's champion (placement and resources are per model)."""
            from modelyard.names import check_model_name

            check_model_name(model)
            client = get_resources(settings).registry
            champion = client.get_model_version_by_alias(model, CHAMPION)
            spec = version_spec(client, model, str(champion.version))
            if spec is None:
                raise TargetError(f"{model} v{champion.version} carries no spec: the kubernetes target needs one")
            return spec

        return KubernetesTarget(settings, spec_of)
    raise TargetError(f"unknown target '{kind}'")
