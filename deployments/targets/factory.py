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
        from tasks.registry import tracking_client, version_spec

        def spec_of(model: str):
            """The spec of the model's champion (placement and resources are per model)."""
            client = tracking_client(settings)
            champion = client.get_model_version_by_alias(model, "champion")
            spec = version_spec(client, model, str(champion.version))
            if spec is None:
                raise TargetError(f"{model} v{champion.version} carries no spec: the kubernetes target needs one")
            return spec

        return KubernetesTarget(settings, spec_of)
    raise TargetError(f"unknown target '{kind}'")
