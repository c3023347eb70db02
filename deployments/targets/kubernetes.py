"""The ``kubernetes`` target: each model version is its own Deployment; one stable Service per
model selects the version that takes traffic, so a blue/green switch is one selector patch.

Objects per version (all named ``<model>-v<version>``): a Deployment, a Service that reaches
only that version (direct probes), a PodDisruptionBudget and a HorizontalPodAutoscaler. Per
model: the stable Service ``<model>``. Per namespace: the Secret of the servers' own tokens
(inference and admin, nothing else) and the ConfigMap of the public keys model signatures are
verified against (mounted read-only).

Pods run as the model image's unprivileged user (uid 10001), non-root, on a read-only root file
system, with every capability dropped, no privilege escalation and the runtime's default seccomp
profile. Model names and versions are checked (``modelyard.names``) before any object is named.

Rendering is pure (``render_manifests``); deciding whether a rollout is done (``rollout_state``)
and which revision an undo returns to (``previous_revision``) are pure too. ``KubernetesTarget``
only moves these objects through the real Kubernetes API; ``undo`` serves a rollback
(``deployments.strategies.kubernetes_roll_back``).
Needs Kubernetes 1.30+ (the preStop ``sleep`` action).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from deployments.targets.base import Endpoint, Replica, TargetError
from modelyard.names import check_model_name, check_version
from modelyard.settings import Settings
from modelyard.spec import ModelSpec

__all__ = [
    "KubernetesTarget", "RolloutState", "default_image", "deployment_name", "describe_pods", "dns_label",
    "model_labels", "previous_revision", "render_manifests", "rollback_template", "rollout_state", "service_name",
]

NAME_LABEL = "app.kubernetes.io/name"
VERSION_LABEL = "modelyard.io/version"
MODEL_ANNOTATION = "modelyard.io/model"
MODEL_VERSION_ANNOTATION = "modelyard.io/model-version"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
FIELD_MANAGER = "modelyard"
CONTAINER = "server"
SERVICE_PORT = 80
STATE_DIR = "/var/lib/modelyard"
# The servers' tokens: `token` (inference bearer token) and `admin-token` (modelyard's own replays).
API_TOKEN_SECRET = "modelyard-api-token"
TOKEN_KEYS = {"MODELYARD_API_TOKEN": "token", "MODELYARD_ADMIN_TOKEN": "admin-token"}
TRUSTED_KEYS_CONFIG_MAP = "modelyard-trusted-model-keys"
TRUSTED_KEYS_DIR = "/etc/modelyard/trusted-model-keys"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
RUN_AS = 10001  # any non-root uid: the image runs a Python server that needs no privileges
# The model part of a name is at most 42 characters and the version part at most 19, so
# "<model>-v<version>" always fits the 63 characters of a DNS-1035 label (a Service name).
MODEL_NAME_MAX = 42
VERSION_NAME_MAX = 19
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# -- names ---------------------------------------------------------------------------------

def _slug(text: str, max_len: int, leading_letter: bool) -> str:
    slug = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")
    if leading_letter and not slug[:1].isalpha():
        slug = f"m-{slug}".rstrip("-")
    if slug == text and len(slug) <= max_len:
        return slug
    # Any change could make two names collide ("Fraud" and "fraud", "a_b" and "a.b"): a short
    # hash of the original keeps them apart.
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    head = slug[: max_len - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}" if head else (f"m{digest}" if leading_letter else digest)


def dns_label(model: str) -> str:
    """The model's name as a DNS-1035 label (what a Service name must be), unchanged when it is
    one; only a valid model name (``modelyard.names``) gets one."""
    return _slug(check_model_name(model), MODEL_NAME_MAX, leading_letter=True)


def version_label(version: str) -> str:
    """The version as it appears in names and the ``modelyard.io/version`` label."""
    return _slug(check_version(version), VERSION_NAME_MAX, leading_letter=False)


def service_name(model: str) -> str:
    """The stable Service: clients call it; its selector says which version answers."""
    return dns_label(model)


def deployment_name(model: str, version: str) -> str:
    """The name of a version's Deployment (and its own Service, PDB and HPA)."""
    return f"{dns_label(model)}-v{version_label(version)}"


def model_labels(model: str, version: str | None = None) -> dict[str, str]:
    """Labels that select a model's pods, or one version's when ``version`` is given."""
    labels = {NAME_LABEL: dns_label(model)}
    if version is not None:
        labels[VERSION_LABEL] = version_label(version)
    return labels


def _check_namespace(namespace: str) -> None:
    if len(namespace) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace):
        raise ValueError(f"serving.kubernetes.namespace {namespace!r} is not a DNS-1123 label")


# -- rendering -----------------------------------------------------------------------------

def _metadata(spec: ModelSpec, version: str | None, name: str) -> dict[str, Any]:
    labels = {**model_labels(spec.name, version), "app.kubernetes.io/part-of": "modelyard",
              "app.kubernetes.io/managed-by": "modelyard"}
    annotations = {MODEL_ANNOTATION: spec.name}
    if version is not None:
        annotations[MODEL_VERSION_ANNOTATION] = str(version)
    return {"name": name, "namespace": spec.serving.kubernetes.namespace, "labels": labels,
            "annotations": annotations}


def _container(spec: ModelSpec, image: str, port: int, command: list[str] | None) -> dict[str, Any]:
    k8s = spec.serving.kubernetes
    resources: dict[str, Any] = {
        "requests": {"cpu": k8s.cpu, "memory": k8s.memory},
        "limits": {"cpu": k8s.cpu, "memory": k8s.memory},
    }
    if spec.serving.gpu:
        if k8s.gpu_count < 1:
            raise ValueError("serving.gpu is true but serving.kubernetes.gpu_count is 0")
        resources["limits"][GPU_RESOURCE] = str(k8s.gpu_count)  # a quantity; its canonical form is a string

    def probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s,
                "timeoutSeconds": 2, "failureThreshold": failures}

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": [
            # The Service reaches the pod on its own IP, not on loopback.
            {"name": "MODELYARD_HOST", "value": "0.0.0.0"},
            {"name": "PORT", "value": str(port)},  # the model image's entrypoint serves on $PORT
            {"name": "MODELYARD_STATE_DIR", "value": STATE_DIR},
            # The server's own tokens, and no other secret (render_token_secret).
            *({"name": variable, "valueFrom": {"secretKeyRef": {"name": API_TOKEN_SECRET, "key": key, "optional": True}}}
              for variable, key in TOKEN_KEYS.items()),
            {"name": "MODELYARD_TRUSTED_MODEL_KEYS_DIR", "value": TRUSTED_KEYS_DIR},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": resources,
        # Loading a model can take a while; the startup probe holds liveness off until it has.
        "startupProbe": probe("/v2/health/live", 2, 90),
        "readinessProbe": probe("/v2/health/ready", 5, 3),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        # Endpoints drop a terminating pod asynchronously; serving on for a few seconds keeps
        # requests that are already routed to it from failing during a rollout.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "trusted-keys", "mountPath": TRUSTED_KEYS_DIR, "readOnly": True}],
    }
    if command:
        container["args"] = list(command)
    return container


def _tolerations(spec: ModelSpec) -> list[dict[str, Any]]:
    tolerations = [t.model_dump(exclude_none=True) for t in spec.serving.kubernetes.tolerations]
    # GPU nodes are commonly tainted so other pods stay off them; a GPU pod must tolerate that
    # taint, and tolerating it is harmless where nodes are not tainted.
    if spec.serving.gpu and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.append(dict(GPU_TOLERATION))
    return tolerations


def _replicas(spec: ModelSpec) -> int:
    k8s = spec.serving.kubernetes
    if k8s.max_replicas < k8s.min_replicas:
        raise ValueError(f"serving.kubernetes.max_replicas ({k8s.max_replicas}) is below min_replicas ({k8s.min_replicas})")
    return min(max(spec.serving.replicas, k8s.min_replicas), k8s.max_replicas)


def render_deployment(spec: ModelSpec, version: str, image: str, port: int = 8080,
                      command: list[str] | None = None) -> dict[str, Any]:
    """The version's Deployment: probes on the server's health routes, a surge-only rolling
    update (never fewer ready pods than asked for), non-root and read-only."""
    name = deployment_name(spec.name, version)
    meta = _metadata(spec, version, name)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 45,  # preStop 5 s + the server's 30 s graceful shutdown
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(spec, image, port, command)],
        "volumes": [{"name": "state", "emptyDir": {}}, {"name": "tmp", "emptyDir": {"medium": "Memory"}},
                    # Not optional: without trusted keys a server refuses every model, so the pod
                    # is better not started at all (the target publishes them first).
                    {"name": "trusted-keys", "configMap": {"name": TRUSTED_KEYS_CONFIG_MAP, "optional": False}}],
    }
    if spec.serving.kubernetes.node_selector:
        pod_spec["nodeSelector"] = dict(spec.serving.kubernetes.node_selector)
    if tolerations := _tolerations(spec):
        pod_spec["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": _replicas(spec),
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": model_labels(spec.name, version)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": dict(meta["labels"]), "annotations": dict(meta["annotations"])},
                "spec": pod_spec,
            },
        },
    }


def render_service(spec: ModelSpec, version: str, stable: bool) -> dict[str, Any]:
    """A ClusterIP Service on port 80 selecting ``version``'s pods: the model's stable Service
    (``stable=True``) or the version's own."""
    name = service_name(spec.name) if stable else deployment_name(spec.name, version)
    meta = _metadata(spec, None if stable else version, name)
    meta["annotations"][MODEL_VERSION_ANNOTATION] = str(version)  # on the stable one: the routed version
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": model_labels(spec.name, version),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_pod_disruption_budget(spec: ModelSpec, version: str) -> dict[str, Any]:
    name = deployment_name(spec.name, version)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, version, name),
        "spec": {"minAvailable": spec.serving.kubernetes.min_available,
                 "selector": {"matchLabels": model_labels(spec.name, version)}},
    }


def render_autoscaler(spec: ModelSpec, version: str) -> dict[str, Any]:
    k8s = spec.serving.kubernetes
    name = deployment_name(spec.name, version)
    _replicas(spec)  # rejects max < min with the spec's field names
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec, version, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": k8s.min_replicas,
            "maxReplicas": k8s.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": k8s.target_cpu_utilization}}}],
        },
    }


def _namespaced(kind: str, api_version: str, name: str, namespace: str) -> dict[str, Any]:
    _check_namespace(namespace)
    return {"apiVersion": api_version, "kind": kind, "metadata": {
        "name": name, "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "modelyard", "app.kubernetes.io/managed-by": "modelyard"}}}


def render_token_secret(namespace: str, replica_env: Mapping[str, str]) -> dict[str, Any]:
    """The Secret of the servers' tokens, from a model server's environment
    (``Settings.replica_env()``): the inference and the admin token, never any other value."""
    data = {key: replica_env[variable] for variable, key in TOKEN_KEYS.items() if replica_env.get(variable)}
    return {**_namespaced("Secret", "v1", API_TOKEN_SECRET, namespace), "type": "Opaque", "stringData": data}


def render_trusted_keys(namespace: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """The ConfigMap of the public keys (file name → PEM) whose model signatures servers trust."""
    if not keys:
        raise ValueError("no trusted model key to publish: every server would refuse its model")
    return {**_namespaced("ConfigMap", "v1", TRUSTED_KEYS_CONFIG_MAP, namespace), "data": dict(keys)}


def render_manifests(spec: ModelSpec, version: str, image: str, port: int = 8080,
                     command: list[str] | None = None) -> list[dict[str, Any]]:
    """Every object a version needs, in apply order: Deployment, its own Service, the model's
    stable Service (selecting this version), PodDisruptionBudget, HorizontalPodAutoscaler.

    ``command`` overrides the image's default arguments; by default the model image's entrypoint
    (infra/docker/Dockerfile.model) serves its baked, digest-checked model on ``$PORT``.
    """
    _check_namespace(spec.serving.kubernetes.namespace)
    return [
        render_deployment(spec, version, image, port, command),
        render_service(spec, version, stable=False),
        render_service(spec, version, stable=True),
        render_pod_disruption_budget(spec, version),
        render_autoscaler(spec, version),
    ]


# -- pure status logic ---------------------------------------------------------------------

@dataclass(frozen=True)
class RolloutState:
    """Where a Deployment's rollout stands: ``ready`` (all asked-for pods updated and
    available), ``failed`` (the controller gave up), otherwise still progressing."""

    ready: bool
    failed: bool
    message: str


def rollout_state(deployment: Mapping[str, Any]) -> RolloutState:
    """Judge a Deployment (API JSON form) the way ``kubectl rollout status`` does."""
    meta, spec, status = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status") or {}
    generation, observed = meta.get("generation", 0), status.get("observedGeneration", 0)
    if observed < generation:
        return RolloutState(False, False, f"waiting for the controller to observe generation {generation}")
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return RolloutState(False, True, f"progress deadline exceeded: {condition.get('message', '')}")
    wanted = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < wanted:
        return RolloutState(False, False, f"{updated} of {wanted} replicas updated")
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old replicas pending termination")
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas available")
    return RolloutState(True, False, f"{available} of {wanted} replicas updated and available")


def _revision(obj: Mapping[str, Any]) -> int | None:
    value = (obj.get("metadata", {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def previous_revision(replicasets: Iterable[Mapping[str, Any]], current: int | None = None) -> Mapping[str, Any] | None:
    """The ReplicaSet to roll back to: the highest revision below ``current`` (by default the
    highest revision there is), as ``kubectl rollout undo`` picks it; ``None`` if there is none."""
    numbered = [(rev, rs) for rs in replicasets if (rev := _revision(rs)) is not None]
    if not numbered:
        return None
    if current is None:
        current = max(rev for rev, _ in numbered)
    older = [(rev, rs) for rev, rs in numbered if rev < current]
    return max(older, key=lambda pair: pair[0])[1] if older else None


def rollback_template(replicaset: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template to put back: the ReplicaSet's, without the hash label the Deployment
    controller adds (it would otherwise never match a new ReplicaSet)."""
    template = copy.deepcopy(dict(replicaset["spec"]["template"]))
    labels = template.get("metadata", {}).get("labels") or {}
    labels.pop("pod-template-hash", None)
    return template


def describe_pods(pods: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]] = (), limit: int = 5) -> str:
    """Why pods are not ready, in one readable paragraph: phase, failing conditions, waiting or
    terminated containers, and the latest warning events of each pod."""
    by_pod: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_pod.setdefault((event.get("involvedObject") or {}).get("name", ""), []).append(event)
    lines = []
    for pod in list(pods)[:limit]:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        parts = [f"phase {status.get('phase', 'Unknown')}"]
        for condition in status.get("conditions") or []:
            if condition.get("status") != "True":
                reason = condition.get("reason") or ""
                message = condition.get("message") or ""
                parts.append(f"{condition.get('type')}=False {reason} {message}".strip())
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            for kind in ("waiting", "terminated"):
                if kind in state:
                    detail = state[kind]
                    parts.append(f"container {container.get('name')} {kind}: {detail.get('reason', '')} "
                                 f"{detail.get('message', '')}".strip())
        warnings = [e for e in by_pod.get(name, []) if e.get("type") == "Warning"]
        warnings.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        parts += [f"event {e.get('reason')}: {e.get('message', '').strip()}" for e in warnings[-3:]]
        lines.append(f"pod {name}: " + "; ".join(parts))
    return "\n".join(lines) if lines else "no pods were created (check the ReplicaSet's events and quotas)"


# -- the target ----------------------------------------------------------------------------

SpecLoader = Callable[[str], ModelSpec]
ImageFor = Callable[[ModelSpec, str], str]


def default_image(spec: ModelSpec, version: str) -> str:
    """``serving.extra.image`` with ``{model}`` and ``{version}`` filled in (a registry the
    cluster pulls from, e.g. ``registry.example/modelyard/{model}:v{version}``), else the tag the
    docker target builds, ``modelyard/<model>:v<version>``."""
    from deployments.targets.docker import image_tag, slug

    pattern = spec.serving.extra.get("image")
    if pattern is None:
        return image_tag(spec.name, version)
    return str(pattern).format(model=slug(spec.name), version=version)


class KubernetesTarget:
    """Runs versions on a real cluster through the Kubernetes API (kubeconfig context from
    settings, else the in-cluster service account)."""

    name = "kubernetes"

    def __init__(self, settings: Settings, spec_loader: SpecLoader, image_for: ImageFor = default_image,
                 poll_s: float = 2.0) -> None:
        self.settings = settings
        self.spec_loader = spec_loader
        self.image_for = image_for
        self.poll_s = poll_s

    # -- API access ------------------------------------------------------------------------

    @cached_property
    def api_client(self):
        """One ApiClient per target, not the module-global default configuration."""
        from kubernetes import client, config

        try:
            return config.new_client_from_config(context=self.settings.kubernetes_context)
        except config.ConfigException as kubeconfig_error:
            if self.settings.kubernetes_context:
                raise TargetError(f"kubeconfig context {self.settings.kubernetes_context!r}: {kubeconfig_error}") from kubeconfig_error
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as incluster_error:
                raise TargetError(f"no Kubernetes credentials: kubeconfig: {kubeconfig_error}; "
                                  f"in-cluster: {incluster_error}") from incluster_error
            return client.ApiClient(configuration)

    def _apis(self):
        from kubernetes import client

        api = self.api_client
        return client.AppsV1Api(api), client.CoreV1Api(api), client.PolicyV1Api(api), client.AutoscalingV2Api(api)

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call an API method and return the server's JSON as it came (camelCase, as the pure
        functions take it): no client-model round trip that could reject or drop fields a
        newer API server sends. Non-2xx answers still raise ``ApiException``."""
        response = method(*args, _preload_content=False, **kwargs)
        return json.loads(response.data or b"{}")

    def _methods(self, kind: str) -> tuple[Any, str]:
        apps, core, policy, autoscaling = self._apis()
        return {
            "Deployment": (apps, "namespaced_deployment"),
            "Service": (core, "namespaced_service"),
            "Secret": (core, "namespaced_secret"),
            "ConfigMap": (core, "namespaced_config_map"),
            "PodDisruptionBudget": (policy, "namespaced_pod_disruption_budget"),
            "HorizontalPodAutoscaler": (autoscaling, "namespaced_horizontal_pod_autoscaler"),
        }[kind]

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` as field manager ``modelyard`` (taking over fields others set)."""
        api, suffix = self._methods(obj["kind"])
        meta = obj["metadata"]
        try:
            return self._call(getattr(api, f"patch_{suffix}"), meta["name"], meta["namespace"], body=dict(obj),
                              field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml")
        except Exception as error:
            raise TargetError(f"applying {obj['kind']} {meta['namespace']}/{meta['name']} failed: {_api_reason(error)}") from error

    def _read(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        api, suffix = self._methods(kind)
        try:
            return self._call(getattr(api, f"read_{suffix}"), name, namespace)
        except Exception as error:
            if _status(error) == 404:
                return None
            raise TargetError(f"reading {kind} {namespace}/{name} failed: {_api_reason(error)}") from error

    def _delete(self, kind: str, name: str, namespace: str) -> bool:
        api, suffix = self._methods(kind)
        try:
            self._call(getattr(api, f"delete_{suffix}"), name, namespace, propagation_policy="Background")
            return True
        except Exception as error:
            if _status(error) == 404:
                return False
            raise TargetError(f"deleting {kind} {namespace}/{name} failed: {_api_reason(error)}") from error

    def trusted_keys(self) -> dict[str, str]:
        """The host's trusted public keys (``*.pub`` in the trusted-keys dir), by file name."""
        from modelyard.signing import PUBLIC_KEY_SUFFIX, trusted_keys_dir

        folder = trusted_keys_dir(self.settings)
        files = sorted(folder.glob(f"*{PUBLIC_KEY_SUFFIX}")) if folder.is_dir() else []
        return {path.name: path.read_text() for path in files}

    # -- Target ----------------------------------------------------------------------------

    def _endpoint(self, spec: ModelSpec, version: str) -> Endpoint:
        name = deployment_name(spec.name, version)
        url = f"http://{name}.{spec.serving.kubernetes.namespace}.svc.cluster.local:{SERVICE_PORT}"
        # One entry: the version's Service spreads requests over its ready pods itself.
        return Endpoint(spec.name, version, (Replica(0, url, SERVICE_PORT, None, name),))

    def endpoint(self, model: str, version: str) -> Endpoint | None:
        """The version's own in-cluster URL, if its Deployment exists and has an available pod."""
        spec = self.spec_loader(model)
        deployment = self._read("Deployment", deployment_name(model, version), spec.serving.kubernetes.namespace)
        if deployment is None or not (deployment.get("status") or {}).get("availableReplicas"):
            return None
        return self._endpoint(spec, version)

    def version_state(self, model: str, version: str) -> RolloutState | None:
        """Where the version's Deployment stands; None when it has none (never started, or retired)."""
        spec = self.spec_loader(model)
        deployment = self._read("Deployment", deployment_name(model, version), spec.serving.kubernetes.namespace)
        return None if deployment is None else rollout_state(deployment)

    def start(self, model: str, version: str, timeout_s: float = 120) -> Endpoint:
        """Apply the version's objects and wait until its rollout is ready. The stable Service is
        created only when the model has none: moving traffic is ``route``'s job."""
        spec = self.spec_loader(model)
        namespace = spec.serving.kubernetes.namespace
        try:
            objects = [render_token_secret(namespace, self.settings.replica_env()),
                       render_trusted_keys(namespace, self.trusted_keys()),
                       *render_manifests(spec, version, self.image_for(spec, version))]
        except ValueError as error:
            raise TargetError(f"{model} v{version} cannot run on Kubernetes: {error}") from error
        stable = service_name(model)
        for obj in objects:
            if obj["kind"] == "Service" and obj["metadata"]["name"] == stable:
                if self._read("Service", stable, namespace) is None:
                    self.apply(obj)
                continue
            self.apply(obj)
        name = deployment_name(model, version)
        try:
            self.wait_rollout(namespace, name, model_labels(model, version), timeout_s)
        except TargetError:
            # Clean up a version that never served, as the local target does; never delete the
            # one the stable Service routes to (a failed re-apply must not take it down).
            if self.routed_version(model) != str(version):
                self.stop(model, version)
            raise
        return self._endpoint(spec, version)

    def stop(self, model: str, version: str) -> bool:
        """Delete the version's Deployment, own Service, PDB and HPA; the stable Service stays."""
        spec = self.spec_loader(model)
        namespace, name = spec.serving.kubernetes.namespace, deployment_name(model, version)
        for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"):
            self._delete(kind, name, namespace)
        return self._delete("Deployment", name, namespace)

    # -- rollouts and traffic --------------------------------------------------------------

    def wait_rollout(self, namespace: str, name: str, selector: Mapping[str, str], timeout_s: float) -> RolloutState:
        """Poll the Deployment until ``rollout_state`` says ready; on failure or timeout raise
        TargetError with what its pods say (conditions, container states, warning events)."""
        apps, *_ = self._apis()
        deadline = time.monotonic() + timeout_s
        state = RolloutState(False, False, "not read yet")
        while True:
            try:
                deployment = self._call(apps.read_namespaced_deployment_status, name, namespace)
            except Exception as error:
                raise TargetError(f"reading Deployment {namespace}/{name} failed: {_api_reason(error)}") from error
            state = rollout_state(deployment)
            if state.ready:
                return state
            if state.failed or time.monotonic() >= deadline:
                why = "failed" if state.failed else f"was not ready after {timeout_s:.0f} s"
                raise TargetError(f"Deployment {namespace}/{name} {why} ({state.message}).\n"
                                  f"{self.pod_report(namespace, selector)}")
            time.sleep(self.poll_s)

    def pod_report(self, namespace: str, selector: Mapping[str, str]) -> str:
        _, core, *_ = self._apis()
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
        try:
            pods = self._call(core.list_namespaced_pod, namespace, label_selector=label_selector)["items"]
            events = []
            for pod in pods[:5]:
                field_selector = f"involvedObject.kind=Pod,involvedObject.name={pod['metadata']['name']}"
                events += self._call(core.list_namespaced_event, namespace, field_selector=field_selector)["items"]
        except Exception as error:
            return f"(pods could not be read: {_api_reason(error)})"
        return describe_pods(pods, events)

    def routed_version(self, model: str) -> str | None:
        """The version the stable Service sends traffic to (its selector's version label)."""
        spec = self.spec_loader(model)
        service = self._read("Service", service_name(model), spec.serving.kubernetes.namespace)
        if service is None:
            return None
        annotations = service.get("metadata", {}).get("annotations") or {}
        selector = service.get("spec", {}).get("selector") or {}
        return annotations.get(MODEL_VERSION_ANNOTATION) or selector.get(VERSION_LABEL)

    def route(self, model: str, version: str) -> None:
        """Blue/green switch: point the stable Service at ``version``, which must be ready."""
        spec = self.spec_loader(model)
        namespace = spec.serving.kubernetes.namespace
        deployment = self._read("Deployment", deployment_name(model, version), namespace)
        if deployment is None:
            raise TargetError(f"{model} v{version} has no Deployment in {namespace}: start it before routing to it")
        state = rollout_state(deployment)
        if not state.ready:
            raise TargetError(f"refusing to route {model} to v{version}: not ready ({state.message})")
        name = service_name(model)
        if self._read("Service", name, namespace) is None:
            self.apply(render_service(spec, version, stable=True))
            return
        _, core, *_ = self._apis()
        patch = {"spec": {"selector": model_labels(model, version)},
                 "metadata": {"annotations": {MODEL_VERSION_ANNOTATION: str(version)}}}
        try:
            self._call(core.patch_namespaced_service, name, namespace, body=patch,
                       _content_type="application/strategic-merge-patch+json")
        except Exception as error:
            raise TargetError(f"switching Service {namespace}/{name} to v{version} failed: {_api_reason(error)}") from error

    def undo(self, model: str, version: str | None = None, timeout_s: float = 120) -> int:
        """Like ``kubectl rollout undo``: put the previous ReplicaSet revision's pod template back
        on the Deployment of ``version`` (default: the routed one), wait until it is ready, and
        return the revision rolled back to."""
        spec = self.spec_loader(model)
        namespace = spec.serving.kubernetes.namespace
        version = version or self.routed_version(model)
        if version is None:
            raise TargetError(f"{model} has no routed version to undo")
        name = deployment_name(model, version)
        deployment = self._read("Deployment", name, namespace)
        if deployment is None:
            raise TargetError(f"{model} v{version} has no Deployment in {namespace}")
        apps, *_ = self._apis()
        uid = deployment["metadata"].get("uid")
        selector = deployment["spec"]["selector"]["matchLabels"]
        try:
            listed = self._call(apps.list_namespaced_replica_set, namespace,
                                label_selector=",".join(f"{k}={v}" for k, v in selector.items()))["items"]
        except Exception as error:
            raise TargetError(f"listing ReplicaSets of {namespace}/{name} failed: {_api_reason(error)}") from error
        owned = [rs for rs in listed
                 if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])]
        target = previous_revision(owned, _revision(deployment))
        if target is None:
            raise TargetError(f"{namespace}/{name} has no earlier revision to undo to")
        patch = [{"op": "replace", "path": "/spec/template", "value": rollback_template(target)}]
        try:
            self._call(apps.patch_namespaced_deployment, name, namespace, body=patch,
                       _content_type="application/json-patch+json")
        except Exception as error:
            raise TargetError(f"rolling back {namespace}/{name} failed: {_api_reason(error)}") from error
        self.wait_rollout(namespace, name, selector, timeout_s)
        return _revision(target) or 0


def _status(error: Exception) -> int | None:
    return getattr(error, "status", None)


def _api_reason(error: Exception) -> str:
    """The API server's own message for an ApiException, else the error itself."""
    body = getattr(error, "body", None)
    if body:
        try:
            return json.loads(body).get("message") or str(body)
        except (ValueError, AttributeError):
            return str(body)
    return str(error)
