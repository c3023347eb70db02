"""Resources are built once per settings, and MLflow's process-wide URIs follow the settings in use."""

from __future__ import annotations

import mlflow

from modelyard.resources import get_resources
from modelyard.settings import Settings


def test_resources_are_built_once_per_settings_and_mlflow_follows_the_stack_in_use(tmp_path):
    first = Settings(state_dir=tmp_path / "a", mlflow_port=45001)
    second = Settings(state_dir=tmp_path / "b", mlflow_port=45002)
    a = get_resources(first)
    b = get_resources(second)
    assert a is not b and a.serving.directory != b.serving.directory
    assert mlflow.get_tracking_uri() == second.mlflow_url
    # Back to the first stack (cached): MLflow's fluent API must not keep talking to the second.
    assert get_resources(Settings(state_dir=tmp_path / "a", mlflow_port=45001)) is a
    assert mlflow.get_tracking_uri() == first.mlflow_url
    assert mlflow.get_registry_uri() == first.mlflow_url
