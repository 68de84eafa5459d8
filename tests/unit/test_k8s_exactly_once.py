"""deploy/k8s-exactly-once: exactly-once workers as a StatefulSet whose pod names are their transactional ids."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s-exactly-once"


def built() -> list[dict[str, Any]]:
    """The overlay as kustomize builds it (kubectl's built-in kustomize)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (its kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_exactly_once_workers_get_stable_transactional_ids():
    docs = built()
    kinds = [d["kind"] for d in docs]
    assert "Deployment" not in kinds and kinds.count("StatefulSet") == 1
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["data"]["WORKER_DELIVERY"] == "exactly_once"
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WORKER_TRANSACTIONAL_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert scaled["spec"]["scaleTargetRef"]["name"] == statefulset["metadata"]["name"]


def test_the_statefulset_matches_the_kubernetes_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    (statefulset,) = [d for d in built() if d["kind"] == "StatefulSet"]
    kubernetes_validate.validate(statefulset, kubernetes_validate.latest_version(), strict=True)


def test_the_pod_template_is_the_deployments():
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    statefulset = yaml.safe_load((OVERLAY / "statefulset.yaml").read_text())
    template = statefulset["spec"]["template"]
    (container,) = template["spec"]["containers"]
    container = {**container, "env": [e for e in container["env"] if e["name"] != "WORKER_TRANSACTIONAL_ID"]}
    assert {**template, "spec": {**template["spec"], "containers": [container]}} == deployment["spec"]["template"], (
        "statefulset.yaml is generated from deployment.yaml: change both"
    )
