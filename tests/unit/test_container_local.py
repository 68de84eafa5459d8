"""Checks of deploy/image/ and docker-compose.local.yml, the files `make image-run` uses (docs/container.md).

The run itself takes half an hour and a Docker engine, so it is not part of the tests; these check
what can be checked in a second: the local compose variant changes only what it says it changes, the
scripts parse, and the Kafka image's entrypoint turns KAFKA_* variables into server.properties as
apache/kafka does (docker-compose.yml's kafka service relies on it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "deploy" / "image"
LOCAL_IMAGES = {
    "KAFKA_IMAGE": "koelectra-local/kafka:4.1.1",
    "WORKER_IMAGE": "koelectra-worker:local",
    "PROMETHEUS_IMAGE": "koelectra-local/prometheus:bookworm",
}
# What the local variant may change besides the image names, and why (docker-compose.local.yml's header):
# the host's network (names, ports, listeners), the worker run as the Deployment runs it, Prometheus's
# copied configuration, Grafana off (no image).
ALLOWED_CHANGES = {
    "kafka": {"network_mode", "extra_hosts", "hostname", "healthcheck",
              "environment.KAFKA_LISTENERS", "environment.KAFKA_ADVERTISED_LISTENERS",
              "environment.KAFKA_CONTROLLER_QUORUM_VOTERS", "environment.KAFKA_HEAP_OPTS"},
    "kafka-init": {"network_mode", "extra_hosts", "environment.BOOTSTRAP_SERVERS"},
    "worker": {"network_mode", "extra_hosts", "read_only", "tmpfs", "environment.WORKER_BOOTSTRAP_SERVERS",
               "environment.WORKER_METRICS_HOST", "environment.WORKER_METRICS_PORT", "environment.HOME"},
    "prometheus": {"network_mode", "extra_hosts", "command", "volumes"},
    "grafana": {"profiles"},
    "producer": {"network_mode", "extra_hosts", "environment.BOOTSTRAP_SERVERS"},
    "schema-registry": {"network_mode", "extra_hosts", "environment.QUARKUS_HTTP_PORT"},
}


def _config(*files: str) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed (scripts/install-tools.sh installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "COMPOSE_", "KAFKA_", "PROMETHEUS_"))}
    env.update(LOCAL_IMAGES, LOCAL_PROMETHEUS_CONFIG="/tmp/prometheus-local")
    args = [exe, "-p", "local-check"]
    for name in files:
        args += ["-f", str(ROOT / name)]
    result = subprocess.run([*args, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _flatten(service: dict[str, Any]) -> dict[str, Any]:
    # Merging two files reorders volume lists: compare them as sets.
    flat = {k: (sorted(map(str, v)) if k == "volumes" else v) for k, v in service.items() if k != "environment"}
    flat.update({f"environment.{k}": v for k, v in (service.get("environment") or {}).items()})
    return flat


def test_local_variant_changes_only_what_it_says() -> None:
    real = _config("docker-compose.yml")["services"]
    local = _config("docker-compose.yml", "docker-compose.local.yml")["services"]
    assert set(local) == set(real)
    for name, service in local.items():
        before, after = _flatten(real[name]), _flatten(service)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        # Image names come from the variables docker-compose.yml already reads.
        assert changed <= ALLOWED_CHANGES[name], f"{name}: unexpected changes {sorted(changed - ALLOWED_CHANGES[name])}"
        if name != "grafana":
            assert service["network_mode"] == "host", f"{name} must use the host's network (no bridge here)"
            assert service.get("image") in (*LOCAL_IMAGES.values(), None) or name in ("grafana", "schema-registry")
    assert local["worker"]["image"] == LOCAL_IMAGES["WORKER_IMAGE"]
    assert local["kafka"]["image"] == local["kafka-init"]["image"] == local["producer"]["image"] == LOCAL_IMAGES["KAFKA_IMAGE"]
    assert local["prometheus"]["image"] == LOCAL_IMAGES["PROMETHEUS_IMAGE"]


def test_local_variant_ports_line_up() -> None:
    local = _config("docker-compose.yml", "docker-compose.local.yml")["services"]
    kafka = local["kafka"]["environment"]
    plaintext = next(x for x in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",") if x.startswith("PLAINTEXT://"))
    address = plaintext.removeprefix("PLAINTEXT://")
    for name, variable in (("kafka-init", "BOOTSTRAP_SERVERS"), ("producer", "BOOTSTRAP_SERVERS"),
                           ("worker", "WORKER_BOOTSTRAP_SERVERS")):
        assert local[name]["environment"][variable] == address, name
    assert "HOST://127.0.0.1:29092" in kafka["KAFKA_LISTENERS"], "29092 stays Kafka's host port"
    run_sh = (IMAGE_DIR / "run.sh").read_text(encoding="utf-8")
    port = local["worker"]["environment"]["WORKER_METRICS_PORT"]
    assert f"worker:{port}" in run_sh, "run.sh points Prometheus at the worker's local metrics port"
    assert any("127.0.0.1:29190" in arg for arg in local["prometheus"]["command"])
    assert "localhost:29190" in run_sh


@pytest.mark.parametrize("script", ["run.sh", "kafka/run", "kafka/tool"])
def test_image_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(IMAGE_DIR / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ["check_worker.py", "check_compose.py"])
def test_check_scripts_compile(script: str) -> None:
    result = subprocess.run([sys.executable, "-m", "py_compile", str(IMAGE_DIR / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_kafka_tool_links_name_known_tools() -> None:
    for link in ("kafka-topics.sh", "kafka-console-producer.sh", "kafka-broker-api-versions.sh"):
        path = IMAGE_DIR / "kafka" / link
        assert path.is_symlink() and os.readlink(path) == "tool", link
        assert link in (IMAGE_DIR / "kafka" / "tool").read_text(encoding="utf-8")


def test_kafka_entrypoint_maps_environment_like_apache_kafka(tmp_path: Path) -> None:
    """KAFKA_FOO_BAR -> foo.bar, __ -> _, ___ -> -, JVM variables skipped; storage formatted once."""
    calls = tmp_path / "java-calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n', encoding="utf-8")
    (fake / "java").chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    props = tmp_path / "server.properties"
    env = {
        "PATH": f"{fake}:/usr/bin:/bin", "SERVER_PROPERTIES": str(props), "CLUSTER_ID": "abc",
        "KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT", "KAFKA_LOG_DIRS": str(data),
        "KAFKA_SOME__UNDERSCORED": "x", "KAFKA_DASHED___NAME": "y", "KAFKA_HEAP_OPTS": "-Xmx64m",
    }
    result = subprocess.run(["bash", str(IMAGE_DIR / "kafka" / "run")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = set(props.read_text(encoding="utf-8").splitlines())
    assert {"node.id=1", "process.roles=broker,controller", "listener.security.protocol.map=PLAINTEXT:PLAINTEXT",
            f"log.dirs={data}", "some_underscored=x", "dashed-name=y"} == lines
    first, broker = calls.read_text(encoding="utf-8").splitlines()
    assert "kafka.tools.StorageTool format -t abc" in first
    assert broker.startswith("-server -Xmx64m") and broker.endswith(f"kafka.Kafka {props}")
