"""Fixtures only (the tools are in harness/): a tiny KoELECTRA-shaped model on the real v3 vocabulary,
the real Kafka brokers, fresh topics, and the counts the integration tests report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.broker import LocalBroker, bootstrap_servers, broker_port
from harness.models import build_tiny_model
from harness.paths import NSMC_SAMPLE
from harness.registry import LocalRegistry
from harness.topics import fresh_topics


@pytest.fixture(scope="session", autouse=True)
def engine_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exports and engine measurements of the whole session go to one temporary directory, never ~/.cache."""
    directory = tmp_path_factory.mktemp("engine-cache")
    os.environ["WORKER_ENGINE_CACHE_DIR"] = str(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-koelectra"))


@pytest.fixture(scope="session")
def tiny_multi_label_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random multi-label model of KoELECTRA's shape (hate, insult, spam, clean; problem_type in its config).

    This seed and initialisation spread every category's probabilities around 0.5 (quartiles about 0.3-0.7 on
    NSMC texts), so thresholds and routes pick real subsets and texts are often several categories at once.
    """
    return build_tiny_model(tmp_path_factory.mktemp("tiny-multi-label"), seed=1, initializer_range=0.2,
                            multi_label=True)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_dir: Path):
    from worker.engines.torch_engine import HFClassifier

    return HFClassifier.load(str(tiny_model_dir), device="cpu", dtype="float32", threads=2)


@pytest.fixture(scope="session")
def nsmc_rows() -> list[tuple[str, str, int]]:
    """(id, document, label) from the committed NSMC sample, non-empty documents only."""
    from worker.datasets import read_nsmc_rows

    return read_nsmc_rows(NSMC_SAMPLE)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    """Bootstrap servers of a real broker: $KAFKA_BOOTSTRAP_SERVERS, or one started here for the session."""
    named = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = LocalBroker(broker_port(0), tmp_path_factory.mktemp("kafka-data"))
    with bootstrap_servers(named, broker) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory):
    """A real Schema Registry (Apicurio, Confluent API) started once for the session and stopped after it:
    its LocalRegistry (``.url`` is the Confluent API). Its H2 database is a file, so a test may stop and
    start it and find the same schemas under the same ids. Port $TEST_REGISTRY_PORT (default
    $TEST_KAFKA_PORT + 30)."""
    port = int(os.environ.get("TEST_REGISTRY_PORT") or broker_port(30))
    with LocalRegistry(port, tmp_path_factory.mktemp("registry-data"), storage="file") as registry:
        yield registry


SECURE_USERS = {"admin": "admin-secret", "worker": "worker-secret", "reader": "reader-secret"}


@dataclass(frozen=True)
class SecureKafka:
    """The second broker of the access-failure tests. `bootstrap` is its PLAINTEXT listener, whose
    principal (User:ANONYMOUS) is a super user: the tests' own admin, producer and reader clients.
    `sasl_bootstrap` is the SASL_PLAINTEXT listener (mechanism PLAIN, `users`), where ACLs apply.
    Topics are never created automatically."""

    bootstrap: str
    sasl_bootstrap: str
    users: dict[str, str]


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory):
    """A broker with auto.create.topics.enable=false, SASL/PLAIN and ACL authorization, started once.

    Ports: $TEST_SECURE_KAFKA_PORT (default $TEST_KAFKA_PORT + 10) for PLAINTEXT, +1 for the
    controller, +2 for SASL_PLAINTEXT."""
    port = int(os.environ.get("TEST_SECURE_KAFKA_PORT") or broker_port(10))
    variant = {
        "KAFKA_AUTO_CREATE_TOPICS": "false",
        "KAFKA_SASL_PORT": str(port + 2),
        "KAFKA_SASL_PLAIN_USERS": ",".join(f"{u}:{p}" for u, p in SECURE_USERS.items()),
        "KAFKA_ACLS": "true",
        "KAFKA_SUPER_USERS": "User:ANONYMOUS;User:admin",
        "KAFKA_STOP_TIMEOUT": "20",
    }
    with LocalBroker(port, tmp_path_factory.mktemp("secure-kafka-data"), variant, stop_deadline_s=60) as broker:
        yield SecureKafka(broker.bootstrap, f"127.0.0.1:{port + 2}", dict(SECURE_USERS))


@pytest.fixture
def topics(kafka_bootstrap: str):
    """Fresh input, output and dead-letter topic names (3 input partitions), created on the broker."""
    return fresh_topics(kafka_bootstrap)


_FAULT_REPORTS: dict[str, dict[str, object]] = {}


@pytest.fixture
def fault_report():
    """Records counts of a fault test; printed in the terminal summary whether it passed or not."""

    def report(name: str, **counts: object) -> None:
        _FAULT_REPORTS.setdefault(name, {}).update(counts)

    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if _FAULT_REPORTS:
        terminalreporter.section("counts reported by the integration tests")
        for name, counts in _FAULT_REPORTS.items():
            terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
