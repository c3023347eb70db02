"""Kubernetes serving objects and Prefect work-pool templates, checked against the real schemas:
Kubernetes' own OpenAPI schemas (kubernetes-validate bundles them, strict: no unknown field
passes), the Kubernetes client's models, and Prefect's own template and job-configuration
validation. No cluster runs here, so nothing in this file claims to deploy; the rollout, undo
and diagnosis logic the target uses against a cluster is tested as the pure functions it is.
"""

from __future__ import annotations

import copy
import re
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes_validate import utils as kv

from deployments.targets.kubernetes import (
    GPU_RESOURCE, NAME_LABEL, VERSION_LABEL, default_image, deployment_name, describe_pods, dns_label,
    model_labels, previous_revision, render_manifests, rollback_template, rollout_state, service_name,
)
from modelyard.settings import Settings
from modelyard.spec import ModelSpec, load_spec, parse_spec
from modelyard.work_pools import (
    load_base_job_template, pipeline_deployment_for, render_job_configuration, render_job_manifest, work_pool_for,
)

SPECS = Path(__file__).resolve().parents[2] / "specs"
# The oldest Kubernetes modelyard supports (preStop `sleep` is on by default from 1.30) and the
# newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30", kv.major_minor(kv.latest_version()))
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CLIENT_MODELS = {"Deployment": k8s.V1Deployment, "Service": k8s.V1Service,
                 "PodDisruptionBudget": k8s.V1PodDisruptionBudget,
                 "HorizontalPodAutoscaler": k8s.V2HorizontalPodAutoscaler, "Job": k8s.V1Job}
# prefect-kubernetes 0.8 requires these two Job-level fields inside the *pod* spec of every base
# job template (its `_get_base_job_manifest` check refuses a template without them). They are not
# PodSpec fields; the API server drops them with a warning (fieldValidation defaults to Warn).
PREFECT_POD_SPEC_EXTRAS = ("completions", "parallelism")


def validate_strict(obj: dict, version: str) -> None:
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        raise AssertionError(f"{obj['kind']} {obj['metadata'].get('name')} is invalid for Kubernetes "
                             f"{version} at {path}: {error.message}") from None


def gpu_spec() -> ModelSpec:
    raw = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    raw["name"] = "fraud_detector.GPU"
    raw["serving"] = {"target": "kubernetes", "strategy": "blue_green", "gpu": True, "replicas": 2,
                      "kubernetes": {"namespace": "ml-serving", "cpu": "2", "memory": "8Gi", "gpu_count": 2,
                                     "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                      "effect": "NoSchedule"}],
                                     "min_replicas": 2, "max_replicas": 6, "min_available": 1}}
    return parse_spec(raw, base_dir=SPECS)


SPEC_CASES = {
    "fraud": lambda: load_spec(SPECS / "fraud.yaml"),
    "breast_cancer": lambda: load_spec(SPECS / "breast_cancer.yaml"),
    "gpu": gpu_spec,
}


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


# -- serving objects -----------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", SPEC_CASES)
def test_every_rendered_object_validates_strictly(case, version):
    objects = render_manifests(SPEC_CASES[case](), "7", "registry.example/modelyard/model:v7")
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "Service", "PodDisruptionBudget",
                                            "HorizontalPodAutoscaler"]
    for obj in objects:
        validate_strict(obj, version)
        # The client's models check what the JSON schemas leave optional (required fields).
        CLIENT_MODELS[obj["kind"]].from_dict(obj)


def test_gpu_deployment_asks_for_gpus_on_gpu_nodes():
    spec = gpu_spec()
    deployment = render_manifests(spec, "3", "img:3")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"][GPU_RESOURCE] == "2"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert deployment["metadata"]["namespace"] == "ml-serving"
    assert deployment["spec"]["replicas"] == 2


def test_cpu_deployment_asks_for_no_gpu_and_tolerates_no_gpu_taint():
    pod = render_manifests(load_spec(SPECS / "fraud.yaml"), "1", "img:1")[0]["spec"]["template"]["spec"]
    assert GPU_RESOURCE not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_pods_run_confined_as_the_images_unprivileged_user():
    from deployments.targets.docker import SERVER_UID
    from deployments.targets.kubernetes import RUN_AS, TRUSTED_KEYS_DIR

    pod = render_manifests(load_spec(SPECS / "fraud.yaml"), "4", "img:4")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    dockerfile = (Path(__file__).resolve().parents[2] / "infra/docker/Dockerfile.model").read_text()
    assert RUN_AS == SERVER_UID and f"ARG SERVER_UID={RUN_AS}" in dockerfile and "\nUSER ${SERVER_UID}" in dockerfile
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True and context["runAsUser"] == RUN_AS
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True and hardened["allowPrivilegeEscalation"] is False
    assert hardened["capabilities"] == {"drop": ["ALL"]} and hardened["privileged"] is False
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[TRUSTED_KEYS_DIR]["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELYARD_TRUSTED_MODEL_KEYS_DIR"]["value"] == TRUSTED_KEYS_DIR


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_servers_secret_holds_their_tokens_and_no_other_secret(tmp_path, version):
    from deployments.targets.kubernetes import API_TOKEN_SECRET, render_token_secret, render_trusted_keys

    settings = Settings(state_dir=tmp_path, api_token="inference-t0ken", admin_token="adm1n-t0ken",
                        webhook_secret="webhook-s3cret", ledger_key="ledger-k3y",
                        database_url="postgresql://u:db-pa55@db:5432/m")
    secret = render_token_secret("ml-serving", settings.replica_env())
    assert secret["stringData"] == {"token": "inference-t0ken", "admin-token": "adm1n-t0ken"}
    assert not any(leak in str(secret) for leak in ("webhook-s3cret", "ledger-k3y", "db-pa55"))
    container = render_manifests(load_spec(SPECS / "fraud.yaml"), "4", "img:4")[0]["spec"]["template"]["spec"][
        "containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"MODELYARD_API_TOKEN": {"name": API_TOKEN_SECRET, "key": "token", "optional": True},
                    "MODELYARD_ADMIN_TOKEN": {"name": API_TOKEN_SECRET, "key": "admin-token", "optional": True}}
    keys = render_trusted_keys("ml-serving", {"abc.pub": "-----BEGIN PUBLIC KEY-----\n…"})
    for obj, model in ((secret, k8s.V1Secret), (keys, k8s.V1ConfigMap)):
        validate_strict(obj, version)
        model.from_dict(obj)
    with pytest.raises(ValueError, match="no trusted model key"):
        render_trusted_keys("ml-serving", {})


@pytest.mark.parametrize("name", ["../x", "a;}", "a\nb", 'a"b', "", "a" * 65, "a/b", "-a", "a..b"])
def test_an_invalid_model_name_names_no_kubernetes_object(name):
    from modelyard.names import InvalidName

    for make in (dns_label, service_name, lambda n: deployment_name(n, "1"), lambda n: model_labels(n, "1")):
        with pytest.raises(InvalidName):
            make(name)
    for version in ("0", "1a", "../1", ""):
        with pytest.raises(InvalidName):
            deployment_name("fraud", version)


def test_deployment_is_probed_hardened_and_surges_without_dropping_pods():
    deployment = render_manifests(load_spec(SPECS / "fraud.yaml"), "4", "img:4")[0]
    spec = deployment["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["revisionHistoryLimit"] > 1  # undo needs earlier ReplicaSets
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELYARD_HOST"]["value"] == "0.0.0.0" and env["PORT"]["value"] == "8080"
    assert env["MODELYARD_API_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_services_select_one_version_so_a_switch_is_a_selector_patch():
    objects = render_manifests(load_spec(SPECS / "fraud.yaml"), "5", "img:5")
    kinds = by_kind(objects)
    deployment = kinds["Deployment"][0]
    own, stable = kinds["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert stable["metadata"]["name"] == service_name("fraud-detector") == "fraud-detector"
    assert own["metadata"]["name"] == deployment["metadata"]["name"] == "fraud-detector-v5"
    for service in (own, stable):
        assert service["spec"]["selector"] == {NAME_LABEL: "fraud-detector", VERSION_LABEL: "5"}
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"][0]["port"] == 80 and service["spec"]["ports"][0]["targetPort"] == "http"
    assert deployment["spec"]["selector"]["matchLabels"] == model_labels("fraud-detector", "5")
    for kind in ("PodDisruptionBudget",):
        assert kinds[kind][0]["spec"]["selector"]["matchLabels"] == model_labels("fraud-detector", "5")
    assert kinds["PodDisruptionBudget"][0]["spec"]["minAvailable"] == 1
    hpa = kinds["HorizontalPodAutoscaler"][0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-detector-v5"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_model_image_is_the_docker_targets_tag_unless_the_spec_names_a_registry():
    from deployments.targets.docker import image_tag

    raw = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    assert default_image(parse_spec(raw), "3") == image_tag("fraud-detector", "3") == "modelyard/fraud-detector:v3"
    pushed = parse_spec(raw | {"serving": {"extra": {"image": "registry.example/ml/{model}:v{version}"}}})
    assert default_image(pushed, "3") == "registry.example/ml/fraud-detector:v3"


# Valid model names (modelyard.names) that are no DNS label as they are.
AWKWARD_NAMES = ["Fraud_Detector.v2", "3d-model", "x-", "a" * 64, "UPPER", "model--name", "a_b", "a.b", "fraud"]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_model_names_become_valid_dns_labels(name):
    raw = yaml.safe_load((SPECS / "breast_cancer.yaml").read_text()) | {"name": name}
    spec = parse_spec(raw)
    objects = render_manifests(spec, "12", "img:12")
    for obj in objects:
        meta = obj["metadata"]
        assert DNS_1035.match(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
        assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in meta["labels"].values()), meta["labels"]
        assert meta["annotations"]["modelyard.io/model"] == name  # the real name stays readable
        validate_strict(obj, K8S_VERSIONS[-1])
    assert deployment_name(name, "12").endswith("-v12")


def test_sanitised_names_of_different_models_do_not_collide():
    names = ["Fraud", "fraud", "a_b", "a.b", "a-b", "a" * 63, "a" * 64]
    assert len({dns_label(n) for n in names}) == len(names)
    assert dns_label("fraud-detector") == "fraud-detector"  # a valid name is kept as it is


def test_inconsistent_specs_are_refused_with_the_field_named():
    raw = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    for serving, field in [({"gpu": True, "kubernetes": {"gpu_count": 0}}, "gpu_count"),
                           ({"kubernetes": {"min_replicas": 5, "max_replicas": 2}}, "max_replicas"),
                           ({"kubernetes": {"namespace": "ML_Serving"}}, "namespace")]:
        with pytest.raises(ValueError, match=field):
            render_manifests(parse_spec(raw | {"serving": serving}), "1", "img:1")


# -- rollout status, undo and diagnosis (pure) ---------------------------------------------

def _deployment(generation=2, observed=2, replicas=3, updated=3, total=3, available=3, conditions=()):
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available, "conditions": list(conditions)}}


def test_rollout_is_ready_only_when_every_replica_is_updated_and_available():
    assert rollout_state(_deployment()).ready
    assert not rollout_state(_deployment(observed=1)).ready              # new spec not seen yet
    assert not rollout_state(_deployment(updated=2, available=2)).ready  # surge still in progress
    assert not rollout_state(_deployment(total=4)).ready                 # an old pod still runs
    assert not rollout_state(_deployment(available=2)).ready             # an updated pod not ready
    waiting = rollout_state(_deployment(updated=1, available=1, total=2))
    assert not waiting.failed and "1 of 3 replicas updated" in waiting.message


def test_fresh_deployment_without_status_is_not_ready():
    state = rollout_state({"metadata": {"generation": 1}, "spec": {"replicas": 1}})
    assert not state.ready and not state.failed


def test_exceeded_progress_deadline_fails_the_rollout():
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": 'ReplicaSet "m-v2-5d9" has timed out progressing.'}
    state = rollout_state(_deployment(updated=1, available=0, conditions=[stuck]))
    assert state.failed and not state.ready and "timed out" in state.message


def _replicaset(revision, image, uid="dep-uid"):
    return {"metadata": {"name": f"m-v1-{revision}", "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"uid": uid}]},
            "spec": {"template": {"metadata": {"labels": {NAME_LABEL: "m", "pod-template-hash": f"h{revision}"}},
                                  "spec": {"containers": [{"name": "server", "image": image}]}}}}


def test_undo_goes_to_the_highest_revision_below_the_current_one():
    sets = [_replicaset(1, "a"), _replicaset(4, "d"), _replicaset(3, "c"), {"metadata": {}}]
    assert previous_revision(sets)["metadata"]["name"] == "m-v1-3"
    assert previous_revision(sets, current=3)["metadata"]["name"] == "m-v1-1"
    assert previous_revision(sets, current=1) is None
    assert previous_revision([_replicaset(1, "a")]) is None
    assert previous_revision([]) is None


def test_rolled_back_template_drops_the_controllers_hash_label():
    rs = _replicaset(2, "b")
    template = rollback_template(rs)
    assert template["metadata"]["labels"] == {NAME_LABEL: "m"}
    assert template["spec"]["containers"][0]["image"] == "b"
    assert "pod-template-hash" in rs["spec"]["template"]["metadata"]["labels"]  # the input is untouched


def test_pod_report_names_what_keeps_pods_from_ready():
    pods = [{"metadata": {"name": "m-v2-abc"},
             "status": {"phase": "Pending",
                        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                        "containerStatuses": [{"name": "server", "state": {"waiting": {
                            "reason": "ImagePullBackOff", "message": 'Back-off pulling image "img:2"'}}}]}},
            {"metadata": {"name": "m-v2-def"},
             "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                            "reason": "Unschedulable",
                                                            "message": "0/3 nodes have nvidia.com/gpu"}]}}]
    events = [{"involvedObject": {"name": "m-v2-abc"}, "type": "Warning", "reason": "Failed",
               "message": "ErrImagePull", "lastTimestamp": "2025-01-01T00:00:01Z"},
              {"involvedObject": {"name": "m-v2-abc"}, "type": "Normal", "reason": "Pulling", "message": "pulling"}]
    report = describe_pods(pods, events)
    assert "ImagePullBackOff" in report and "event Failed: ErrImagePull" in report and "Pulling" not in report
    assert "Unschedulable" in report and "nvidia.com/gpu" in report
    assert "no pods" in describe_pods([])


# -- Prefect work pools --------------------------------------------------------------------

def _worker(kind: str):
    from prefect.workers.process import ProcessWorker
    from prefect_docker.worker import DockerWorker
    from prefect_kubernetes.worker import KubernetesWorker

    return {"local": ProcessWorker, "docker": DockerWorker, "gpu": KubernetesWorker}[kind]


GPU_VARIABLES = ("gpu_count", "node_selector", "tolerations")


def test_local_template_is_prefects_process_default():
    assert load_base_job_template("local") == _worker("local").get_default_base_job_template()


def test_docker_template_is_prefects_default_on_host_networking():
    ours = load_base_job_template("docker")
    default = _worker("docker").get_default_base_job_template()
    assert ours["variables"]["properties"]["network_mode"]["default"] == "host"
    ours["variables"]["properties"]["network_mode"] = default["variables"]["properties"]["network_mode"]
    assert ours == default


def test_gpu_template_is_prefects_kubernetes_default_plus_gpu_placement():
    ours = load_base_job_template("gpu")
    default = _worker("gpu").get_default_base_job_template()
    properties = ours["variables"]["properties"]
    for name in GPU_VARIABLES:
        properties.pop(name)
    assert properties.pop("namespace")["default"] == "modelyard"
    default["variables"]["properties"].pop("namespace")
    pod = ours["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert pod.pop("nodeSelector") == "{{ node_selector }}"
    assert pod.pop("tolerations") == "{{ tolerations }}"
    assert pod["containers"][0]["resources"]["limits"].pop(GPU_RESOURCE) == "{{ gpu_count }}"
    assert ours["job_configuration"] == default["job_configuration"]
    assert properties == default["variables"]["properties"]


@pytest.mark.parametrize("kind,pool_type", [("local", "process"), ("docker", "docker"), ("gpu", "kubernetes")])
def test_templates_pass_prefects_own_validation(kind, pool_type):
    from prefect.server.schemas.actions import WorkPoolCreate as ServerWorkPoolCreate, WorkPoolUpdate

    template = load_base_job_template(kind)
    # The server-side model is the one that checks every placeholder is a declared variable
    # (the client-side WorkPoolCreate carries the template unchecked).
    ServerWorkPoolCreate(name=kind, type=pool_type, base_job_template=template)
    WorkPoolUpdate(base_job_template=template)
    # The worker builds its job configuration from the template like this for every flow run.
    _worker(kind).job_configuration(**render_job_configuration(template))
    # Every variable's default satisfies its own schema.
    jsonschema.Draft7Validator.check_schema(template["variables"])
    defaults = {n: a["default"] for n, a in template["variables"]["properties"].items() if a.get("default") is not None}
    jsonschema.validate(defaults, template["variables"])


def test_a_template_with_an_undeclared_placeholder_is_refused():
    from prefect.server.schemas.actions import WorkPoolCreate as ServerWorkPoolCreate

    template = load_base_job_template("gpu")
    template["variables"]["properties"].pop("gpu_count")
    with pytest.raises(ValueError, match="gpu_count"):
        ServerWorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)


def test_gpu_job_manifest_with_defaults_asks_for_one_gpu_on_gpu_nodes():
    pod = render_job_manifest(load_base_job_template("gpu"))["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {GPU_RESOURCE: 1}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


GPU_OVERRIDES = {"gpu_count": 4, "image": "registry.example/modelyard-flows:1.2", "namespace": "training",
                 "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                 {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                                  "tolerationSeconds": 300}],
                 "cpu_request": "4", "memory_limit": "32Gi", "env.MODELYARD_STATE_DIR": "/data"}


def test_gpu_overrides_reach_the_job_manifest_and_fit_the_variables_schema():
    template = load_base_job_template("gpu")
    jsonschema.validate({k: v for k, v in GPU_OVERRIDES.items() if "." not in k}, template["variables"])
    manifest = render_job_manifest(template, GPU_OVERRIDES)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {"limits": {GPU_RESOURCE: 4, "memory": "32Gi"}, "requests": {"cpu": "4"}}
    assert container["image"] == GPU_OVERRIDES["image"] and container["env"] == {"MODELYARD_STATE_DIR": "/data"}
    assert pod["nodeSelector"] == GPU_OVERRIDES["node_selector"]
    assert pod["tolerations"] == GPU_OVERRIDES["tolerations"]
    assert manifest["metadata"]["namespace"] == "training"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", [{}, GPU_OVERRIDES], ids=["defaults", "overrides"])
def test_gpu_job_the_worker_would_submit_is_a_valid_batch_v1_job(values, version):
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = KubernetesWorkerJobConfiguration(**render_job_configuration(load_base_job_template("gpu"), values))
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="gpu-training-run"))
    job = copy.deepcopy(configuration.job_manifest)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] == values.get("gpu_count", 1)
    assert pod["nodeSelector"] and pod["tolerations"]
    assert {"name": "PREFECT__FLOW_RUN_ID", "value": str(configuration.labels["prefect.io/flow-run-id"])} \
        in pod["containers"][0]["env"]
    with pytest.raises(kv.ValidationError, match="completions"):
        kv.validate(job, version, strict=True)
    for field in PREFECT_POD_SPEC_EXTRAS:
        assert pod.pop(field) == 1
    validate_strict(job, version)


def test_flow_runs_are_routed_to_the_pool_their_model_needs():
    settings = Settings(work_pool="laptop")
    base = yaml.safe_load((SPECS / "fraud.yaml").read_text())
    assert work_pool_for(parse_spec(base), settings) == "laptop"
    assert work_pool_for(parse_spec(base | {"serving": {"target": "docker"}}), settings) == "laptop"
    gpu = parse_spec(base | {"serving": {"target": "kubernetes", "gpu": True}})
    assert work_pool_for(gpu, settings) == "gpu"
    assert pipeline_deployment_for(gpu, settings) == "model-pipeline/model-pipeline-gpu"
    assert work_pool_for(parse_spec(base | {"serving": {"target": "kubernetes"}}), settings) == "laptop"
    assert pipeline_deployment_for(parse_spec(base), settings) == "model-pipeline/model-pipeline"
    # The gpu deployment exists in prefect.yaml, on the gpu pool.
    deployments = {d["name"]: d for d in yaml.safe_load((SPECS.parent / "prefect.yaml").read_text())["deployments"]}
    assert deployments["model-pipeline-gpu"]["work_pool"]["name"] == "gpu"
