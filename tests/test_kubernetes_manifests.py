"""The Kubernetes manifests under deploy/kubernetes, checked without a cluster.

`kubectl kustomize` renders each overlay (as `kubectl apply -k` would), every rendered object is
validated against the Kubernetes OpenAPI schemas that `kubernetes-validate` ships (strict: unknown
fields fail), and the choices docs/scaling.md promises are checked on the rendered objects: probes,
the non-root user, the read-only root file system, GPU limits only in the GPU overlay, a grace
period longer than the request timeout, selectors that match the pods. KServe's InferenceService
is a custom resource the schemas do not have: its required fields are checked by hand and its
predictor's pod part is validated as the Pod it becomes. The Prometheus Operator's
ServiceMonitor and PrometheusRule (overlays/*-monitored) are validated against models generated
from its CRDs, and the PrometheusRule must carry exactly deploy/prometheus/rules.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.config import Settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (the dev extra)"
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"  # the oldest release we claim: sleep preStop hooks are GA from 1.30
KUBECTL = shutil.which("kubectl")


def _kustomize_major() -> int:
    out = subprocess.run(
        [KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "v0")
    return int(re.match(r"v?(\d+)", version).group(1))


pytestmark = [
    pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (scripts/system-deps.sh)"),
]


def render(name: str) -> list[dict]:
    if _kustomize_major() < 4:
        pytest.skip("this kubectl's kustomize is older than v4; install kubectl >= 1.21")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects), "one object of each kind"
    return kinds


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _settings_env_names() -> set[str]:
    return {f"VAE_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_overlay_renders_valid_kubernetes_objects(overlay):
    objects = render(f"overlays/{overlay}")
    kinds = by_kind(objects)
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_deployment_keeps_its_promises(overlay):
    kinds = by_kind(render(f"overlays/{overlay}"))
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = _env(container)

    unknown = {n for n in env if n.startswith("VAE_")} - _settings_env_names()
    assert not unknown, f"not settings of the service: {unknown}"
    assert env["VAE_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")

    http_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert int(env["PORT"]) == http_port
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == "1" == requests["nvidia.com/gpu"]
    else:
        assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's `vae` user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # The only place the service writes (spooled uploads, matplotlib's cache) is a volume.
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])

    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    timeout = float(env["VAE_REQUEST_TIMEOUT_S"])
    grace = float(env["VAE_SHUTDOWN_GRACE_S"])
    assert timeout < grace and pre_stop + grace < pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_service_budget_and_autoscaler_point_at_the_pods(overlay):
    kinds = by_kind(render(f"overlays/{overlay}"))
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    pdb_selector = kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert pdb_selector and pdb_selector.items() <= pod_labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


# KServe's PredictorSpec is a PodSpec plus these component fields (serving.kserve.io/v1beta1).
KSERVE_COMPONENT_FIELDS = {
    "minReplicas": int,
    "maxReplicas": int,
    "scaleTarget": int,
    "scaleMetric": str,
    "containerConcurrency": int,
    "timeout": int,
    "canaryTrafficPercent": int,
    "logger": dict,
    "batcher": dict,
    "labels": dict,
    "annotations": dict,
    "deploymentStrategy": dict,
}


def test_kserve_inference_service():
    [isvc] = render("kserve")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    predictor = dict(isvc["spec"]["predictor"])
    assert set(isvc["spec"]) <= {"predictor", "transformer", "explainer"}

    component = {k: predictor.pop(k) for k in list(predictor) if k in KSERVE_COMPONENT_FIELDS}
    for key, value in component.items():
        assert isinstance(value, KSERVE_COMPONENT_FIELDS[key]), key
    assert component["minReplicas"] <= component["maxReplicas"]
    # What is left is the pod: it must be a valid PodSpec with one custom container.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": predictor}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)

    [container] = predictor["containers"]
    assert container["image"] == "mnist-vae:latest"
    env = _env(container)
    assert not {n for n in env if n.startswith("VAE_")} - _settings_env_names()
    port = container["ports"][0]["containerPort"]
    assert int(env["PORT"]) == port
    for probe, path in [
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ]:
        assert container[probe]["httpGet"] == {"path": path, "port": port}
    assert component["timeout"] > float(env["VAE_REQUEST_TIMEOUT_S"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


# Prometheus Operator clusters: overlays/<hw>-monitored adds a ServiceMonitor, the alerting rules
# as a PrometheusRule and queue-depth scaling (components/, prometheus-adapter/values.yaml).
MONITORED = ["gpu-monitored", "cpu-monitored"]
RULES_FILE = DEPLOY.parent / "prometheus" / "rules.yml"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _validate_operator_object(obj: dict) -> None:
    """Against the Prometheus Operator's CRD schemas (as pydantic models); strict: a field the
    CRD does not have is dropped by the model, so the round trip must give the object back."""
    models = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1",
        reason="pip install cloudcoil-models-prometheus-operator (the dev extra)",
    )
    model = getattr(models, obj["kind"]).model_validate(obj)
    assert model.model_dump(mode="json", by_alias=True, exclude_unset=True) == obj


@pytest.mark.parametrize("overlay", MONITORED)
def test_monitored_overlay_renders_valid_objects(overlay):
    objects = render(f"overlays/{overlay}")
    kinds = by_kind(objects)
    assert set(kinds) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        *OPERATOR_KINDS,
    }
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            _validate_operator_object(obj)
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", MONITORED)
def test_monitored_overlay_is_its_overlay_with_monitoring_added(overlay):
    plain = by_kind(render(f"overlays/{overlay.removesuffix('-monitored')}"))
    monitored = by_kind(render(f"overlays/{overlay}"))
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert monitored[kind] == plain[kind], kind
    plain_hpa, hpa = plain["HorizontalPodAutoscaler"], monitored["HorizontalPodAutoscaler"]
    assert (
        hpa["spec"]["metrics"][: len(plain_hpa["spec"]["metrics"])] == plain_hpa["spec"]["metrics"]
    )
    assert {**hpa["spec"], "metrics": []} == {**plain_hpa["spec"], "metrics": []}


@pytest.mark.parametrize("overlay", MONITORED)
def test_autoscaler_scales_on_queue_depth_as_the_adapter_serves_it(overlay):
    hpa = by_kind(render(f"overlays/{overlay}"))["HorizontalPodAutoscaler"]
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"  # CPU still counts
    pods = by_type["Pods"]["pods"]
    assert pods["target"]["type"] == "AverageValue" and float(pods["target"]["averageValue"]) > 0

    [rule] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert rule["name"]["as"] == pods["metric"]["name"]  # the name the HPA asks the adapter for
    assert re.fullmatch(rule["name"]["matches"], "vae_queue_depth")
    assert rule["seriesQuery"].startswith("vae_queue_depth{")  # the service's gauge
    overrides = rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert template in rule["metricsQuery"]


@pytest.mark.parametrize("overlay", MONITORED)
def test_service_monitor_scrapes_the_pods_behind_the_service(overlay):
    kinds = by_kind(render(f"overlays/{overlay}"))
    monitor, service = kinds["ServiceMonitor"], kinds["Service"]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"
    # The operator names the job after the Service; the VaeDown alert selects that job.
    down = next(
        rule
        for group in kinds["PrometheusRule"]["spec"]["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "VaeDown"
    )
    assert f'job="{service["metadata"]["name"]}"' in down["expr"]


@pytest.mark.parametrize("overlay", MONITORED)
def test_prometheus_rule_carries_exactly_the_rules_file(overlay):
    """deploy/prometheus/rules.yml is what promtool checks and unit-tests; the PrometheusRule
    must be the same rules (regenerate it: python scripts/sync_prometheus_rule.py)."""
    rule = by_kind(render(f"overlays/{overlay}"))["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"], (
        "run: python scripts/sync_prometheus_rule.py"
    )
