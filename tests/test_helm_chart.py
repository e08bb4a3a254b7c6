"""The Helm chart, rendered and linted offline by Helm's own Go SDK (helm-python-sdk), its manifests
validated with kubernetes-validate and its ScaledObjects against KEDA's CRD schema (vendored in
tests/data/keda). The queue KEDA scales on is checked against a real Redis."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from helm_python.chart import Chart, lint, values_from_yaml
from helm_python.errors import HelmError

from shared.config.settings import CommonSettings
from shared.queue import create_celery, queue_for, task_name_for

CHART = Path(__file__).resolve().parents[1] / "helm" / "vlmq"
PRODUCTION = CHART / "values-production.example.yaml"
KEDA_CRD = Path(__file__).parent / "data" / "keda" / "keda.sh_scaledobjects.yaml"
KUBERNETES = "1.30.0"


def render(values: dict | None = None) -> list[dict]:
    chart = Chart.load(CHART)
    rendered = chart.render(values, name="prod", namespace="vlmq", is_install=True)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def production_values() -> dict:
    return values_from_yaml(PRODUCTION.read_text())


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="module")
def scaled_object_schema() -> dict:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("values_file", [None, PRODUCTION], ids=["defaults", "production"])
def test_the_chart_lints_clean_and_every_manifest_validates(values_file, scaled_object_schema):
    values = values_from_yaml(values_file.read_text()) if values_file else None

    report = lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [] and report["messages"] == [], report

    for doc in render(values):
        if doc["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(doc, scaled_object_schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_one_scaled_object_per_worker_counting_exactly_its_queues_lists():
    docs = render(production_values())
    workers = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Deployment") if "-worker-" in doc["metadata"]["name"]}
    scaled = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "ScaledObject")}

    assert set(workers) == {"prod-vlmq-worker-small", "prod-vlmq-worker-large"}
    assert set(scaled) == set(workers) | {"prod-vlmq-frames"}
    for name, models in (("prod-vlmq-worker-small", ["internvl2-1b"]), ("prod-vlmq-worker-large", ["internvl2-8b"])):
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert [t["metadata"]["listName"] for t in spec["triggers"]] == [queue_for(model) for model in models]
        assert {t["type"] for t in spec["triggers"]} == {"redis"}
        assert all(t["metadata"]["address"] == "redis-master.data.svc.cluster.local:6379" for t in spec["triggers"])
        assert "replicas" not in workers[name]["spec"]  # KEDA owns them
    assert scaled["prod-vlmq-worker-small"]["spec"]["minReplicaCount"] == 0  # scale to zero
    assert scaled["prod-vlmq-frames"]["spec"]["triggers"][0]["metadata"]["listName"] == "vlmq.frames"


def test_gpu_limits_shared_memory_weights_and_the_models_each_worker_serves():
    docs = render(production_values())
    large = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "prod-vlmq-worker-large")
    pod = large["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert {"name": "VLMQ_SERVE_MODELS", "value": '["internvl2-8b"]'} in container["env"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "internvl-weights", "readOnly": True}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_migrations_run_as_a_hook_before_install_and_upgrade_with_their_settings():
    docs = render()
    (job,) = of_kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "alembic", "upgrade", "head"]
    # the ConfigMap and Secret it reads are hooks of an earlier weight, so they exist before it runs
    for settings in of_kind(docs, "ConfigMap") + of_kind(docs, "Secret"):
        annotations = settings["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert int(annotations["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])


def test_the_api_has_probes_an_autoscaler_a_disruption_budget_and_an_optional_ingress():
    docs = render(production_values())
    api = next(d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "prod-vlmq-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    budgets = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "PodDisruptionBudget")}
    assert budgets["prod-vlmq-api"] == {"minAvailable": 2, "selector": api["spec"]["selector"]}
    (ingress,) = of_kind(docs, "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "vlmq-tls"
    assert of_kind(render(), "Ingress") == []


def test_celery_pods_serve_metrics_and_health_and_workers_drain_inside_their_grace_period():
    docs = render(production_values())
    celery_pods = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] != "prod-vlmq-api"]
    assert {d["metadata"]["name"] for d in celery_pods} >= {"prod-vlmq-notifier", "prod-vlmq-frames"}
    for deployment in celery_pods:
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        env = {item["name"]: item["value"] for item in container.get("env", [])}
        # then Prometheus finds the pod, whose main process serves /metrics and /healthz on one port
        assert template["metadata"]["annotations"]["prometheus.io/port"] == env["VLMQ_METRICS_PORT"] == "9100"
        assert container["ports"] == [{"name": "metrics", "containerPort": 9100}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        # and pool processes share their samples through an emptyDir
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert mounts["metrics"] == env["VLMQ_METRICS_DIR"]
        if "-worker-" in deployment["metadata"]["name"]:
            # and a GPU worker hands its jobs back well before Kubernetes would kill it
            grace = template["spec"]["terminationGracePeriodSeconds"]
            assert 0 < float(env["VLMQ_SHUTDOWN_DRAIN_S"]) <= grace - 30


def test_every_setting_the_config_map_sets_is_a_vlmq_setting():
    known = {f"VLMQ_{name.upper()}" for name in CommonSettings.model_fields}
    from shared.config.settings import (
        ApiSettings,
        FramesSettings,
        NotifierSettings,
        WorkerSettings,
    )

    for settings_class in (ApiSettings, WorkerSettings, NotifierSettings, FramesSettings):
        known |= {f"VLMQ_{name.upper()}" for name in settings_class.model_fields}
    for values in (None, production_values()):
        (config_map,) = of_kind(render(values), "ConfigMap")
        assert set(config_map["data"]) <= known, set(config_map["data"]) - known


BAD_VALUES = [
    ("a worker without models", {"workers": [{"name": "w", "models": [], "gpus": 1, "minReplicas": 0, "maxReplicas": 1,
                                             "listLength": 1}]}),
    ("a worker name that is not a DNS label", {"workers": [{"name": "Big_GPU", "models": ["m"], "gpus": 1,
                                                             "minReplicas": 0, "maxReplicas": 1, "listLength": 1}]}),
    ("a negative GPU count", {"workers": [{"name": "w", "models": ["m"], "gpus": -1, "minReplicas": 0,
                                           "maxReplicas": 1, "listLength": 1}]}),
    ("a misspelt worker field", {"workers": [{"name": "w", "models": ["m"], "gpu": 1, "gpus": 1, "minReplicas": 0,
                                              "maxReplicas": 1, "listLength": 1}]}),
    ("the latest tag", {"image": {"api": {"repository": "r", "tag": "latest"}, "worker": {"repository": "r", "tag": "1"}}}),
    ("a Redis address without a port", {"redis": {"address": "redis"}}),
    ("a broker that is not Redis", {"secrets": {"brokerUrl": "amqp://rabbit//"}}),
    ("an API port below 1024", {"api": {"port": 80}}),
    ("a settings key with the prefix", {"settings": {"VLMQ_ENV": "production"}}),
    ("no workers at all", {"workers": []}),
    ("a metrics port below 1024", {"metrics": {"port": 80}}),
    ("no frames worker when idle (nothing would settle batches)", {"frames": {"minReplicas": 0}}),
]


@pytest.mark.parametrize(("_why", "values"), BAD_VALUES, ids=[why for why, _ in BAD_VALUES])
def test_values_schema_refuses_bad_values(_why, values):
    with pytest.raises(HelmError) as refused:
        render(values)
    assert "values don't meet the specifications of the schema" in str(refused.value)


def test_the_redis_list_a_scaled_object_counts_holds_exactly_the_queued_jobs(broker_url):
    # given a worker pool for a model no worker serves, as the chart renders it
    values = production_values()
    values["workers"][0]["models"] = ["nobody-serves-this"]
    small = next(d for d in of_kind(render(values), "ScaledObject") if d["metadata"]["name"] == "prod-vlmq-worker-small")
    (trigger,) = small["spec"]["triggers"]
    list_name = trigger["metadata"]["listName"]

    # when N jobs are enqueued the way the API does (with and without a message priority)
    app = create_celery(CommonSettings(broker_url=broker_url), models=["nobody-serves-this"])
    client = redis.Redis.from_url(broker_url)
    client.delete(list_name)
    for number in range(7):
        app.send_task(task_name_for("caption"), args=[f"job_{number}"], queue=queue_for("nobody-serves-this"),
                      priority=number % 3 or None)

    # then the one list the trigger names holds all N, and no priority list exists beside it
    assert client.llen(list_name) == 7
    assert [key for key in client.scan_iter(f"{list_name}*")] == [list_name.encode()]
    client.delete(list_name)
