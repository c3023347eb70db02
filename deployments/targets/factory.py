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
    raise TargetError(f"target '{kind}' is not routed by nginx: deploy it with `modelyard k8s apply` "
                      "(see deployments/targets/kubernetes.py)")
