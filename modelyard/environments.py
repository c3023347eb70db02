"""Environments as MLflow advises: one registered model per environment, a version promoted by
copying it (``MlflowClient.copy_model_version``) into the next one.

dev is the spec's own name (where the pipeline registers, so nothing changes for a spec without
environments); staging and production are ``<name>-staging`` and ``<name>-production``. MLflow's
examples write ``<env>.<name>``; a dash is used because the registered model name is also the
serving key (nginx upstreams, supervisord programs, Kubernetes object names), where a dotted
prefix would not be a DNS label. A spec may not take a name ending in one of the suffixes, so
the mapping is one-to-one both ways.
"""

from __future__ import annotations

from modelyard.names import MODEL_NAME_MAX, InvalidName, check_model_name

ENVIRONMENTS: tuple[str, ...] = ("dev", "staging", "production")
ENVIRONMENT_SUFFIXES: tuple[str, ...] = tuple(f"-{env}" for env in ENVIRONMENTS if env != "dev")

# Tags on a version copied into an environment (the original's tags are copied with it).
TAG_ENVIRONMENT = "modelyard.environment"
TAG_SOURCE_MODEL = "modelyard.source_model"  # the registered model it was copied from
TAG_SOURCE_VERSION = "modelyard.source_version"
TAG_ORIGIN = "modelyard.origin"  # <dev model>/<dev version>: the version as first registered
TAG_TEAM = "modelyard.team"  # on registered models and versions
TAG_AUTHOR = "modelyard.author"  # who trained (or requested the training of) a version


def environment_model(model: str, env: str) -> str:
    """The registered model that holds ``model``'s versions in ``env``."""
    if env not in ENVIRONMENTS:
        raise InvalidName(f"environment: {env!r} is not one of {', '.join(ENVIRONMENTS)}")
    name = model if env == "dev" else f"{model}-{env}"
    if len(name) > MODEL_NAME_MAX:
        raise InvalidName(f"name: {model!r} is too long to hold its {env} environment ({name!r} is over "
                          f"{MODEL_NAME_MAX} characters)")
    return check_model_name(name)


def split_environment(registered: str) -> tuple[str, str]:
    """(the spec's model name, environment) of a registered model name: the inverse of ``environment_model``."""
    for env, suffix in zip(ENVIRONMENTS[1:], ENVIRONMENT_SUFFIXES, strict=True):
        if registered.endswith(suffix) and len(registered) > len(suffix):
            return registered[: -len(suffix)], env
    return registered, "dev"
