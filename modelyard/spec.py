"""The model spec: everything that makes one model differ from another, validated at load.

The pipeline code never names a dataset, a column or a threshold; it reads them here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelyard.names import InvalidName, check_model_name

class SpecError(ValueError):
    """The spec file is missing, not YAML, or does not match the schema; says which field."""


TEAM_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
TaskKind = Literal["binary_classification", "multiclass_classification", "regression"]

# The metrics the evaluation computes for each task (tasks/evaluation.py; a unit test holds the two
# together): the only names a spec's primary metric and promotion policy may use.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary_classification": ("accuracy", "f1", "precision", "recall", "roc_auc", "average_precision", "log_loss"),
    "multiclass_classification": ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSpec(_Strict):
    method: Literal["random", "time"] = "random"
    test_size: float = Field(0.25, gt=0, lt=1)
    time_column: str | None = None
    seed: int = 42
    stratify: bool = True

    @model_validator(mode="after")
    def _time_split_needs_a_column(self) -> SplitSpec:
        if self.method == "time" and not self.time_column:
            raise ValueError("split.method 'time' needs split.time_column")
        return self


class DataSpec(_Strict):
    """Where the data lives and which columns matter.

    ``source`` is a CSV or Parquet path (relative to the spec file), ``sklearn:<name>`` for a
    dataset bundled with scikit-learn, or ``generator:<name>`` for modelyard's demo generators.
    """

    source: str
    target: str
    features: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    categorical: list[str] | None = None
    generator_params: dict[str, Any] = Field(default_factory=dict)
    split: SplitSpec = Field(default_factory=SplitSpec)


class EstimatorSpec(_Strict):
    kind: Literal[
        "gradient_boosting", "hist_gradient_boosting", "random_forest",
        "logistic_regression", "linear_regression", "ridge",
    ] = "gradient_boosting"
    params: dict[str, Any] = Field(default_factory=dict)


class ExpectationSpec(_Strict):
    """One explicit Great Expectations expectation, by its GX class name in snake case."""

    type: str
    column: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ValidationSpec(_Strict):
    infer_from_reference: bool = True
    expectations: list[ExpectationSpec] = Field(default_factory=list)
    range_tolerance: float = Field(
        0.1, ge=0, description="Inferred numeric ranges widen by this share of their span."
    )
    mostly: float = Field(1.0, gt=0, le=1, description="Share of rows an inferred expectation must hold for.")
    range_mostly: float | None = Field(
        None, gt=0, le=1, description="Share of rows inferred numeric ranges must hold for (default: mostly).")


class PolicySpec(_Strict):
    min_metrics: dict[str, float] = Field(default_factory=dict)
    max_regression: dict[str, float] = Field(
        default_factory=dict, description="Largest allowed drop (or rise, for errors) against the champion."
    )
    max_p95_latency_ms: float | None = None
    allow_any: bool = Field(False, description="Promote any version: a policy without a threshold must say so.")

    @property
    def is_empty(self) -> bool:
        return not self.min_metrics and not self.max_regression and self.max_p95_latency_ms is None


class MetricsSpec(_Strict):
    primary: str
    slices: list[str] = Field(default_factory=list)


class GateSpec(_Strict):
    """What a new version must show, on live traffic, before it gets more of it."""

    min_requests: int = Field(20, ge=1, description=(
        "Requests the new version must answer, and logged rows compared with the serving version's answers, "
        "before it is judged."))
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Share of 5xx answers (and dropped connections).")
    max_p99_ms: float | None = Field(None, gt=0, description="Absolute p99 latency ceiling of the new version.")
    max_p99_ratio: float = Field(3.0, gt=0, description=(
        "New version's p99 over the serving version's p99; on windows under 1,000 requests, at the highest "
        "quantile with 10 requests above it (p75 at 40), since a p99 of 40 requests is their single slowest."))
    min_agreement: float = Field(0.9, ge=0, le=1, description="Share of the same requests both versions answer alike.")
    max_prediction_psi: float = Field(0.25, ge=0, description="PSI of the new version's predictions against the serving one's.")
    regression_tolerance: float = Field(0.1, ge=0, description="Relative difference under which two regression outputs agree.")


class RolloutSpec(_Strict):
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100], description="Canary traffic percentages, last one 100.")
    bake_s: float = Field(20.0, ge=0, description="How long each canary step runs before its gates are judged.")
    shadow_s: float = Field(30.0, ge=0, description="How long a shadow version receives mirrored traffic.")
    gates: GateSpec = Field(default_factory=GateSpec)

    @model_validator(mode="after")
    def _steps_end_at_100(self) -> RolloutSpec:
        if not self.steps or self.steps[-1] != 100 or any(not 0 < s <= 100 for s in self.steps) or self.steps != sorted(self.steps):
            raise ValueError("rollout.steps must rise within 1..100 and end at 100")
        return self


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesSpec(_Strict):
    """How a version runs on Kubernetes: resources, placement, scaling, disruption budget."""

    namespace: str = "modelyard"
    cpu: str = "500m"
    memory: str = "1Gi"
    gpu_count: int = Field(1, ge=0, description="nvidia.com/gpu per pod when serving.gpu is true.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    target_cpu_utilization: int = Field(70, ge=1, le=100)
    min_available: int = Field(1, ge=0, description="PodDisruptionBudget: pods kept through voluntary disruptions.")


class ServingSpec(_Strict):
    target: Literal["local", "docker", "kubernetes"] = "local"
    strategy: Literal["blue_green", "canary", "shadow"] = "canary"
    gpu: bool = False
    replicas: int = Field(1, ge=1, description=(
        "Replicas of each serving version (local: supervised processes, docker: containers, kubernetes: pods); "
        "the stable endpoint spreads requests over them and retries one that fails on another."))
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    extra: dict[str, Any] = Field(default_factory=dict)


class MonitoringSpec(_Strict):
    """How a deployed model is watched, and what counts as an alert."""

    interval_s: int = Field(300, ge=10, description="How often the monitor flow judges a window.")
    window_s: int = Field(3600, ge=10, description="The longest stretch of traffic one window covers.")
    min_rows: int = Field(200, ge=1, description="Fewer logged rows than this: no verdict yet.")
    max_rows: int = Field(50_000, ge=1000, description="Larger windows are judged on a uniform sample of this size.")
    drift_share: float = Field(0.5, gt=0, le=1, description="Share of drifted features that makes the dataset drifted.")
    labels: str | None = Field(
        None, description="Delayed labels: a CSV/Parquet file or folder with prediction_id (the server's "
        "X-Modelyard-Prediction-Id answer header), the target column and, for requests of several rows, row "
        "(relative to the spec; default: <state>/labels/<model>/).")
    max_performance_drop: float = Field(0.05, ge=0, description="Largest drop of the primary metric against evaluation.")
    min_labelled_rows: int = Field(100, ge=1, description="Labelled rows a performance verdict needs.")
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_ms: float = Field(250.0, gt=0)
    fresh_deploy_s: int = Field(900, ge=0, description="A version this young whose service degrades is rolled back.")

    @model_validator(mode="after")
    def _window_covers_the_interval(self) -> MonitoringSpec:
        if self.window_s < self.interval_s:
            raise ValueError(f"monitoring.window_s ({self.window_s}) is shorter than monitoring.interval_s "
                             f"({self.interval_s}): traffic between two windows would never be judged")
        return self


class RetrainSpec(_Strict):
    automatic: bool = Field(True, description="Alerts start a retrain; off: only `modelyard retrain` does.")
    cooldown_s: int = Field(1800, ge=0, description="At most one retrain per model in this window, however many alerts.")
    include_traffic: bool = Field(True, description="Train on logged traffic joined with its delayed labels too.")
    min_labelled_rows: int = Field(200, ge=0, description="Labelled traffic rows needed to use it.")


EnvironmentName = Literal["dev", "staging", "production"]
# The order versions travel in: each environment receives versions from the one before it.
PROMOTION_ORDER: tuple[str, ...] = ("dev", "staging", "production")


class EnvironmentSpec(_Strict):
    """One environment a model's versions are promoted through: how a version gets in, and how it
    is served and watched there. Unset serving fields fall back to the spec's ``serving`` and
    ``monitoring`` sections."""

    promotion: Literal["automatic", "approval", "manual"] = Field("automatic", description=(
        "How a version arrives from the environment before it once it serves there: automatic (as far as the "
        "policy allows), approval (suspended until enough people other than its author approve in the Prefect UI "
        "or with `modelyard approve`), manual (only `modelyard promote`). dev is where the pipeline registers."))
    approvals: int = Field(1, ge=1, le=5, description="Distinct approvers needed when promotion is 'approval'.")
    approvers: list[str] = Field(default_factory=list, description=(
        "Identities allowed to approve here (enrolled with `modelyard approvers add`); empty: any enrolled approver."))
    approval_timeout_s: int = Field(86_400, ge=10, description="An approval not given within this rejects the promotion.")
    strategy: Literal["blue_green", "canary", "shadow"] | None = None
    target: Literal["local", "docker", "kubernetes"] | None = None
    replicas: int | None = Field(None, ge=1)
    gates: GateSpec | None = Field(None, description="Rollout gates here (default: serving.rollout.gates).")
    monitor_interval_s: int | None = Field(None, ge=10, description="Monitor schedule here (default: monitoring.interval_s).")
    policy: str | None = Field(None, description=(
        "A Rego policy (package modelyard.spec), relative to the spec, applied to promotions into this "
        "environment on top of the organisation's."))


def _default_environments() -> dict[str, EnvironmentSpec]:
    return {"dev": EnvironmentSpec()}


class ModelCardSpec(_Strict):
    intended_use: str = ""
    limitations: list[str] = Field(default_factory=list)
    owner: str = ""


class ModelSpec(_Strict):
    name: str
    team: str = Field(description="The team that owns the model: permissions, KPIs and reports are cut by it.")
    task: TaskKind
    data: DataSpec
    estimator: EstimatorSpec = Field(default_factory=EstimatorSpec)
    metrics: MetricsSpec
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    card: ModelCardSpec = Field(default_factory=ModelCardSpec)
    environments: dict[EnvironmentName, EnvironmentSpec] = Field(default_factory=_default_environments, description=(
        "dev → staging → production: each with its own registered model (modelyard.environments), endpoint, "
        "monitor schedule, strategy and policy. Absent: dev only, as before."))
    base_dir: Path = Field(Path("."), exclude=True, description="Directory relative paths start from.")

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @field_validator("name", mode="before")
    @classmethod
    def _one_pattern_for_model_names(cls, name: object) -> str:
        """The name reaches paths, nginx, supervisord, image tags and Kubernetes objects: the one
        pattern of ``modelyard.names``, the same the CLI, the API and the events check."""
        try:
            return check_model_name(name, "name")
        except InvalidName as error:  # pydantic names the field itself
            raise ValueError(str(error).removeprefix("name: ")) from None

    @field_validator("team", mode="before")
    @classmethod
    def _team_is_a_name(cls, team: object) -> str:
        """A team name reaches MLflow tags, Prometheus labels and report file names."""
        if not isinstance(team, str) or not TEAM_PATTERN.fullmatch(team):
            raise ValueError(f"{team!r} is not a team name (lower-case letters, digits and '-', at most 40)")
        return team

    @model_validator(mode="after")
    def _environments_in_order(self) -> ModelSpec:
        from modelyard.environments import ENVIRONMENT_SUFFIXES, environment_model

        if "dev" not in self.environments:
            raise ValueError("environments: 'dev' is missing (the pipeline registers versions there)")
        if self.name.endswith(ENVIRONMENT_SUFFIXES):
            raise ValueError(f"name: {self.name!r} ends like an environment's registered model "
                             f"({', '.join(ENVIRONMENT_SUFFIXES)}); choose another name")
        for env in self.environments:
            environment_model(self.name, env)  # within the name length for every environment
        return self

    def environment(self, env: str) -> EnvironmentSpec:
        """The spec of ``env``; SpecError naming the environment when the spec does not have it."""
        if env not in self.environments:
            raise SpecError(f"{self.name}: environment {env!r} is not in its spec "
                            f"(environments: {', '.join(self.environments)})")
        return self.environments[env]

    def next_environment(self, env: str) -> str | None:
        """The environment that receives versions from ``env``, None after the last one."""
        order = [e for e in PROMOTION_ORDER if e in self.environments]
        return order[order.index(env) + 1] if env in order and order.index(env) + 1 < len(order) else None

    def serving_for(self, env: str) -> ServingSpec:
        """How versions are served in ``env``: the spec's serving section with the environment's overrides."""
        chosen = self.environment(env)
        rollout = self.serving.rollout if chosen.gates is None else \
            self.serving.rollout.model_copy(update={"gates": chosen.gates})
        overrides = {"strategy": chosen.strategy, "target": chosen.target, "replicas": chosen.replicas}
        return self.serving.model_copy(update={"rollout": rollout, **{k: v for k, v in overrides.items() if v is not None}})

    def monitor_interval_for(self, env: str) -> int:
        return self.environment(env).monitor_interval_s or self.monitoring.interval_s

    @model_validator(mode="after")
    def _metrics_the_task_computes(self) -> ModelSpec:
        computed = TASK_METRICS[self.task]
        named = [("metrics.primary", self.metrics.primary)] + \
            [(f"policy.min_metrics.{m}", m) for m in self.policy.min_metrics] + \
            [(f"policy.max_regression.{m}", m) for m in self.policy.max_regression]
        for field, metric in named:
            if metric not in computed:
                raise ValueError(f"{field}: {metric!r} is not computed for {self.task} "
                                 f"(computed: {', '.join(computed)})")
        return self

    @model_validator(mode="after")
    def _policy_says_what_promotes(self) -> ModelSpec:
        if self.policy.is_empty and not self.policy.allow_any:
            raise ValueError("policy is empty: set policy.min_metrics, policy.max_regression or "
                             "policy.max_p95_latency_ms, or policy.allow_any: true to promote any version")
        return self


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model spec, naming the offending field on error."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise SpecError(f"model spec {path} does not exist") from error
    except yaml.YAMLError as error:
        raise SpecError(f"model spec {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"model spec {path} must be a YAML mapping")
    return parse_spec(raw, base_dir=path.resolve().parent, origin=str(path))


def parse_spec(raw: dict[str, Any], base_dir: Path | None = None, origin: str = "spec") -> ModelSpec:
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as error:
        messages = [(e["loc"], e["msg"].removeprefix("Value error, ")) for e in error.errors()]
        problems = "; ".join(f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg for loc, msg in messages)
        raise SpecError(f"{origin} is invalid: {problems}") from error
    return spec.model_copy(update={"base_dir": base_dir or Path(".")})
