"""Shared fixtures: a tiny KoELECTRA-shaped model built on the real v3 vocabulary, and the real Kafka broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
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
    from worker.model import HFClassifier

    return HFClassifier.load(str(tiny_model_dir), device="cpu", dtype="float32", threads=2)


@pytest.fixture(scope="session")
def nsmc_rows() -> list[tuple[str, str, int]]:
    """(id, document, label) from the committed NSMC sample, non-empty documents only."""
    from worker.evaluation import read_nsmc_rows

    return read_nsmc_rows(NSMC_SAMPLE)


class LocalBroker:
    """A single-node Apache Kafka (KRaft) run by deploy/kafka/kafka.sh."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.bootstrap = f"127.0.0.1:{port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
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


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory):
    """Bootstrap servers of a real broker: $KAFKA_BOOTSTRAP_SERVERS, or one started here for the session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalBroker(int(os.environ.get("TEST_KAFKA_PORT", "39092")), tmp_path_factory.mktemp("kafka-data"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topics(kafka_bootstrap: str):
    """Fresh input, output and dead-letter topic names (3 input partitions), created on the broker."""
    from tests.kafka_helpers import create_topics

    suffix = uuid.uuid4().hex[:8]
    names = {"input": f"in-{suffix}", "output": f"out-{suffix}", "dlq": f"dlq-{suffix}"}
    create_topics(kafka_bootstrap, {names["input"]: 3, names["output"]: 3, names["dlq"]: 1})
    return names


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
