"""Shared fixtures: a tiny KoELECTRA-shaped model built on the real v3 vocabulary, and the real Kafka broker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
TOKENIZER_DIR = DATA / "koelectra-v3-tokenizer"
NSMC_SAMPLE = DATA / "nsmc_sample.tsv"
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"


def build_tiny_model(
    target: Path, id2label: dict[int, str] | None = None, seed: int = 0, initializer_range: float = 0.02
) -> Path:
    """An ElectraForSequenceClassification of KoELECTRA-Small-v3's shape, scaled down, random weights.

    With the default initialisation every text scores about 0.5; a larger ``initializer_range``
    makes the scores spread over (0, 1) and depend on the words, attention and padding, which is
    what comparing two engines' outputs needs.
    """
    import torch
    from transformers import ElectraConfig, ElectraForSequenceClassification

    id2label = id2label or {0: "negative", 1: "positive"}
    config = ElectraConfig(
        vocab_size=35000,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=initializer_range,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(seed)
    model = ElectraForSequenceClassification(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, target / name)
    return target


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
def tiny_classifier(tiny_model_dir: Path):
    from worker.engines.torch_engine import HFClassifier

    return HFClassifier.load(str(tiny_model_dir), device="cpu", dtype="float32", threads=2)


@pytest.fixture(scope="session")
def nsmc_rows() -> list[tuple[str, str, int]]:
    """(id, document, label) from the committed NSMC sample, non-empty documents only."""
    from worker.datasets import read_nsmc_rows

    return read_nsmc_rows(NSMC_SAMPLE)


def broker_port(offset: int) -> int:
    """Ports of the test brokers: $TEST_KAFKA_PORT (default 19092) plus an offset per broker.

    Below Linux's ephemeral range (32768-60999): a port in it may be taken by one of the many client
    connections the tests open, and the broker then cannot bind it.
    """
    return int(os.environ.get("TEST_KAFKA_PORT", "19092")) + offset


class LocalBroker:
    """A single-node Apache Kafka (KRaft) run by deploy/kafka/kafka.sh; `variant` sets its optional
    KAFKA_* variables (auto-create, SASL listener, ACLs: see deploy/kafka/README.md)."""

    def __init__(self, port: int, data_dir: Path, variant: dict[str, str] | None = None) -> None:
        self.port = port
        self.data_dir = data_dir
        self.bootstrap = f"127.0.0.1:{port}"
        self.variant = dict(variant or {})

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.variant,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "KAFKA_DATA_DIR": str(self.data_dir),
        }

    def run(self, *args: str, timeout: float = 300) -> None:
        subprocess.run(["bash", str(KAFKA_SH), *args], env=self._env(), check=True, timeout=timeout)

    def start(self) -> None:
        self.run("start")

    def stop(self) -> None:
        self.run("stop")

    def kill(self) -> None:
        self.run("kill")

    def stop_within(self, deadline_s: float) -> None:
        """Graceful stop (kafka.sh itself SIGKILLs after $KAFKA_STOP_TIMEOUT); if even that hangs, kill."""
        try:
            self.run("stop", timeout=deadline_s)
        except (subprocess.SubprocessError, OSError):
            self.kill()
    def pid(self) -> int:
        return int((self.data_dir / "kafka.pid").read_text().strip())

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open and nothing answers (a long GC pause, a hung host)."""
        os.kill(self.pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    """Bootstrap servers of a real broker: $KAFKA_BOOTSTRAP_SERVERS, or one started here for the session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalBroker(broker_port(0), tmp_path_factory.mktemp("kafka-data"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


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
    broker = LocalBroker(port, tmp_path_factory.mktemp("secure-kafka-data"), variant)
    try:  # a start that fails half-way may leave a broker running: stop it too
        broker.start()
        yield SecureKafka(broker.bootstrap, f"127.0.0.1:{port + 2}", dict(SECURE_USERS))
    finally:
        broker.stop_within(60)


@pytest.fixture
def topics(kafka_bootstrap: str):
    """Fresh input, output and dead-letter topic names (3 input partitions), created on the broker."""
    from tests.kafka_helpers import fresh_topics

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
