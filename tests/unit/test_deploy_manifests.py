"""Checks of the deployment files: Dockerfile, docker-compose.yml and deploy/k8s/.

- docker-compose.yml must pass `docker-compose config` (Debian's docker-compose package; CI installs it
  through scripts/install-tools.sh). A missing docker-compose fails these tests, it does not skip them.
- Core Kubernetes kinds are validated offline against the JSON schemas bundled in the
  `kubernetes-validate` package (strict: unknown fields are errors). CRD kinds (KEDA ScaledObject and
  TriggerAuthentication, Prometheus Operator PodMonitor) are checked field by field here.
- Cross-file invariants: the grace period outlasts WORKER_SHUTDOWN_TIMEOUT_S, probes use /healthz and
  /readyz, KEDA never scales past the input topic's partition count, names and selectors line up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
NSMC_TSV = ROOT / "tests" / "data" / "nsmc_sample.tsv"

EXPECTED_SERVICES = {"kafka", "kafka-init", "worker", "prometheus", "grafana", "producer"}
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"}
# Oldest Kubernetes minor we claim to support, plus the newest one the validator bundles.
MIN_K8S_VERSION = "1.29.0"


# --------------------------------------------------------------------------------------------- helpers
def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed; it validates docker-compose.yml. "
            "Install it with `apt-get install docker-compose` (scripts/install-tools.sh does)."
        )
    return exe


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as written (variables like ${RATE:-50} not substituted)."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose_resolved() -> dict[str, Any]:
    """docker-compose.yml as docker-compose resolves it, with the defaults of its ${VARIABLES}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "COMPOSE_"))}
    result = _run([_docker_compose(), "-f", str(COMPOSE_FILE), "config"], env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _load_k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return _load_k8s()


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__file__"}


def _env_of(compose: dict[str, Any], service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _seconds(value: str | int | float) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value.strip())
    assert match and any(match.groups()), f"cannot parse duration {value!r}"
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def _input_partitions(compose: dict[str, Any]) -> int:
    return int(_env_of(compose, "kafka-init")["INPUT_PARTITIONS"])


# --------------------------------------------------------------------------------------------- compose
def test_compose_config_is_valid() -> None:
    result = _run([_docker_compose(), "-f", str(COMPOSE_FILE), "config", "-q"])
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}{result.stdout}"


def test_compose_config_lists_expected_services() -> None:
    result = _run([_docker_compose(), "-f", str(COMPOSE_FILE), "config", "--services"])
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert EXPECTED_SERVICES <= services, f"missing services: {EXPECTED_SERVICES - services}"


def test_compose_config_with_docker_compose_plugin_if_present() -> None:
    docker = shutil.which("docker")
    if docker is None or _run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("no `docker compose` CLI plugin here; docker-compose (v1) checked the file above")
    result = _run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"])
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"


def test_compose_startup_order_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["healthcheck"]["test"], "kafka needs a healthcheck for depends_on"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker", "producer"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert services["producer"].get("profiles") == ["demo"], "the producer runs only with --profile demo"
    for name in EXPECTED_SERVICES - {"producer"}:
        assert not services[name].get("profiles"), f"{name} must start by default"


def test_compose_kafka_listeners(compose: dict[str, Any]) -> None:
    env = _env_of(compose, "kafka")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "29092:29092" in compose["services"]["kafka"]["ports"]


def test_compose_topics_match_worker_settings(compose: dict[str, Any]) -> None:
    init = _env_of(compose, "kafka-init")
    worker = _env_of(compose, "worker")
    assert init["INPUT_TOPIC"] == worker["WORKER_INPUT_TOPIC"] == _env_of(compose, "producer")["INPUT_TOPIC"]
    assert init["OUTPUT_TOPIC"] == worker["WORKER_OUTPUT_TOPIC"]
    assert init["DLQ_TOPIC"] == worker["WORKER_DLQ_TOPIC"]
    assert _input_partitions(compose) == 6
    assert worker["WORKER_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_compose_worker_settings_load(compose_resolved: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.settings import load_settings

    compose = compose_resolved
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    for name, value in _env_of(compose, "worker").items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    # The demo producer writes JSON objects with the review under "text".
    assert settings.input_format == "json" and settings.text_field == "text"
    grace = _seconds(compose["services"]["worker"]["stop_grace_period"])
    assert grace > settings.shutdown_timeout_s, "stop_grace_period must outlast WORKER_SHUTDOWN_TIMEOUT_S"


def test_compose_worker_volumes_and_image(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"]["context"] == "."
    assert any(str(v).split(":")[1] == "/models" for v in worker["volumes"]), "model cache volume at /models"
    assert _env_of(compose, "worker")["HF_HOME"].startswith("/models/")


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: bind-mount source {source} does not exist"


def test_compose_monitoring_mounts(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom
    grafana = compose["services"]["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    env = _env_of(compose, "grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


@pytest.mark.parametrize("script", ["create-topics.sh", "produce-nsmc.sh"])
def test_compose_scripts_parse(script: str) -> None:
    result = _run(["bash", "-n", str(ROOT / "deploy" / "compose" / script)])
    assert result.returncode == 0, result.stderr


def test_demo_producer_turns_nsmc_rows_into_keyed_json() -> None:
    awk = shutil.which("awk")
    assert awk, "awk is needed (it is part of every Debian and of the Kafka image)"
    result = _run(
        [awk, "-v", "rate=0", "-f", str(ROOT / "deploy" / "compose" / "tsv-to-json.awk"), str(NSMC_TSV)],
        env={**os.environ, "LC_ALL": "C"},
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in NSMC_TSV.read_text(encoding="utf-8").splitlines()[1:]]
    lines = result.stdout.splitlines()
    assert len(lines) == len(rows)
    for (rid, document, label), line in zip(rows, lines):
        key, value = line.split("\t", 1)
        record = json.loads(value)
        assert key == rid == record["id"]
        assert record["text"] == document
        assert record["label"] == int(label)


# --------------------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(froms) >= 2, "multi-stage build expected"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.MULTILINE)
    assert "download.pytorch.org/whl/cpu" in text, "torch must come from the CPU wheel index"
    assert re.search(r'^ENTRYPOINT \["worker"\]$', text, flags=re.MULTILINE)
    assert re.search(r'^CMD \["run"\]$', text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and all(not u.startswith(("root", "0")) for u in users), "the image must run as non-root"
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, flags=re.MULTILINE), "HEALTHCHECK on /healthz"
    assert "ARG PRELOAD_MODEL=0" in text and "FROM model-${PRELOAD_MODEL}" in text
    assert "AutoModelForSequenceClassification" in text and "HF_HOME=/models/hf" in text


def test_dockerignore_keeps_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list style: everything excluded first"
    for needed in ("!pyproject.toml", "!README.md", "!worker/"):
        assert needed in lines, f".dockerignore must re-include {needed[1:]} (the Dockerfile copies it)"


# --------------------------------------------------------------------------------------------- Kubernetes
def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"kustomization.yaml resources {sorted(listed)} != files {sorted(present)}"
    assert "namespace" not in kustomization, "namespace-agnostic: choose it at apply time"


def test_manifests_are_namespace_agnostic(k8s: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in k8s}
    assert CORE_KINDS | {"ScaledObject", "PodMonitor"} <= kinds
    for doc in k8s:
        assert "namespace" not in doc["metadata"], f"{doc['__file__']}: {doc['kind']} names a namespace"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "koelectra-worker"


def _schema_versions() -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed (it is in the `test` extra: pip install -e '.[test]')")
    available = kubernetes_validate.utils.all_versions()
    versions = [kubernetes_validate.latest_version()]
    if any(v.startswith(MIN_K8S_VERSION.rsplit(".", 1)[0]) for v in available):
        versions.insert(0, MIN_K8S_VERSION)
    return versions


def test_every_kind_is_checked(k8s: list[dict[str, Any]]) -> None:
    for doc in k8s:
        is_crd = doc["apiVersion"].startswith(CRD_GROUPS)
        assert is_crd or doc["kind"] in CORE_KINDS, f"{doc['kind']}: add it to CORE_KINDS (schema-checked)"


@pytest.mark.parametrize(
    "doc",
    [d for d in _load_k8s() if not d["apiVersion"].startswith(CRD_GROUPS)],
    ids=lambda d: f"{d['__file__']}:{d['kind']}",
)
def test_core_kinds_match_kubernetes_schemas(doc: dict[str, Any]) -> None:
    versions = _schema_versions()  # fails with an install hint when kubernetes-validate is missing
    import kubernetes_validate

    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(_strip(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
            problems.append(f"Kubernetes {version}, at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(exc.message)
    assert not problems, f"{doc['__file__']} {doc['kind']} is invalid:\n" + "\n".join(problems)


def test_deployment_probes_and_shutdown(k8s: list[dict[str, Any]]) -> None:
    deployment = _one(k8s, "Deployment")
    config = _one(k8s, "ConfigMap")["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    shutdown = float(config["WORKER_SHUTDOWN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > shutdown, (
        "terminationGracePeriodSeconds must outlast WORKER_SHUTDOWN_TIMEOUT_S, or in-flight batches are killed"
    )
    port = int(config["WORKER_METRICS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] in ("/readyz", "/healthz")
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model download needs a generous startup"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", port)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"


def test_deployment_security_and_resources(k8s: list[dict[str, Any]]) -> None:
    pod = _one(k8s, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cache_mount = next(path for path in mounts if env["HF_HOME"].startswith(path))
    assert "emptyDir" in volumes[mounts[cache_mount]] or "persistentVolumeClaim" in volumes[mounts[cache_mount]]
    assert "/tmp" in mounts, "a writable /tmp under a read-only root filesystem"
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def test_deployment_env_sources_exist_and_load(k8s: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.settings import Settings, load_settings

    container = _one(k8s, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    config = _one(k8s, "ConfigMap")
    secret = _one(k8s, "Secret")
    refs = {
        ("ConfigMap" if "configMapRef" in e else "Secret"): (e.get("configMapRef") or e.get("secretRef"))["name"]
        for e in container["envFrom"]
    }
    assert refs == {"ConfigMap": config["metadata"]["name"], "Secret": secret["metadata"]["name"]}
    variables = {**config["data"], **secret["stringData"]}
    for name in variables:
        assert name.startswith("WORKER_"), name
        if not name.startswith("WORKER_KAFKA_"):
            assert name[len("WORKER_"):].lower() in Settings.model_fields, f"unknown setting {name}"
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    kafka = settings.librdkafka("consumer")
    assert kafka["security.protocol"] == "SASL_SSL"
    assert kafka["sasl.username"] and kafka["sasl.password"]
    assert "sasl.password" not in json.dumps(settings.masked_dump()).replace('"sasl.password": "**********"', "")


def test_selectors_match_pod_labels(k8s: list[dict[str, Any]]) -> None:
    deployment = _one(k8s, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def matches(selector: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    assert matches(deployment["spec"]["selector"]["matchLabels"])
    assert matches(_one(k8s, "Service")["spec"]["selector"])
    assert matches(_one(k8s, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert matches(_one(k8s, "PodMonitor")["spec"]["selector"]["matchLabels"])


def test_service_and_podmonitor_target_the_metrics_port(k8s: list[dict[str, Any]]) -> None:
    (port,) = _one(k8s, "Service")["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    monitor = _one(k8s, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


def test_pdb_allows_draining_a_single_replica(k8s: list[dict[str, Any]]) -> None:
    spec = _one(k8s, "PodDisruptionBudget")["spec"]
    assert "maxUnavailable" in spec and "minAvailable" not in spec


def test_keda_scaledobject(k8s: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    scaled = _one(k8s, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    deployment = _one(k8s, "Deployment")
    config = _one(k8s, "ConfigMap")["data"]
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    partitions = _input_partitions(compose)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= partitions, "more replicas than input partitions would sit idle"
    assert spec["maxReplicaCount"] == partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values are strings"
    assert meta["consumerGroup"] == config["WORKER_GROUP_ID"]
    assert meta["topic"] == config["WORKER_INPUT_TOPIC"]
    assert meta["bootstrapServers"] == config["WORKER_BOOTSTRAP_SERVERS"]
    assert meta["offsetResetPolicy"] == config["WORKER_AUTO_OFFSET_RESET"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    known = {
        "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
        "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
        "limitToPartitionsWithLag", "version", "partitionLimitation", "sasl", "tls", "unsafeSsl",
    }
    assert set(meta) <= known, f"unknown kafka trigger fields: {set(meta) - known}"
    assert meta.get("sasl", "none") in {"none", "plaintext", "scram_sha256", "scram_sha512", "oauthbearer", "gssapi"}


def test_keda_trigger_authentication_reads_the_worker_secret(k8s: list[dict[str, Any]]) -> None:
    scaled = _one(k8s, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    auth = _one(k8s, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = _one(k8s, "Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in {"username", "password", "sasl", "tls", "ca", "cert", "key", "keyPassword"}
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"], f"Secret has no key {ref['key']}"
