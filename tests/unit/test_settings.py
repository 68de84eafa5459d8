import pytest
from pydantic import SecretStr

from worker.errors import ConfigError
from worker.settings import DEFAULT_MODEL, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults():
    s = load_settings()
    assert s.model == DEFAULT_MODEL
    assert s.auto_offset_reset == "earliest"
    assert s.delivery == "at_least_once"
    assert s.metrics_port == 8000


def test_required_names_come_from_environment(monkeypatch):
    env = {
        "WORKER_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "WORKER_INPUT_TOPIC": "in",
        "WORKER_OUTPUT_TOPIC": "out",
        "WORKER_GROUP_ID": "g",
        "WORKER_MODEL": "/models/x",
        "WORKER_MODEL_REVISION": "abc123",
        "WORKER_DEVICE": "cuda:1",
        "WORKER_METRICS_PORT": "9100",
        "WORKER_AUTO_OFFSET_RESET": "latest",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.bootstrap_servers, s.input_topic, s.output_topic, s.group_id) == ("k1:9092,k2:9092", "in", "out", "g")
    assert (s.model, s.model_revision, s.device, s.metrics_port, s.auto_offset_reset) == (
        "/models/x", "abc123", "cuda:1", 9100, "latest")


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("WORKER_INPUT_TOPIC=from-dotenv\nWORKER_KAFKA_SASL_USERNAME=alice\n")
    s = load_settings()
    assert s.input_topic == "from-dotenv"
    assert s.librdkafka("consumer")["sasl.username"] == "alice"


def test_librdkafka_pass_through_and_scopes(monkeypatch):
    monkeypatch.setenv("WORKER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("WORKER_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("WORKER_KAFKA_CONSUMER_FETCH_MAX_BYTES", "1048576")
    monkeypatch.setenv("WORKER_KAFKA_PRODUCER_LINGER_MS", "20")
    s = load_settings()
    consumer, producer = s.librdkafka("consumer"), s.librdkafka("producer")
    assert consumer["security.protocol"] == producer["security.protocol"] == "SASL_SSL"
    assert consumer["sasl.password"] == "hunter2"
    assert consumer["fetch.max.bytes"] == "1048576" and "fetch.max.bytes" not in producer
    assert producer["linger.ms"] == "20" and "linger.ms" not in consumer
    assert isinstance(s.kafka["sasl.password"], SecretStr)


def test_secrets_never_appear_in_dumps(monkeypatch):
    monkeypatch.setenv("WORKER_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("WORKER_KAFKA_SSL_KEY_PASSWORD", "s3cret")
    s = load_settings()
    for text in (repr(s), str(s), str(s.masked_dump()), s.model_dump_json()):
        assert "hunter2" not in text and "s3cret" not in text


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("WORKER_BATCH_MAX_MESSAGES", "0", "WORKER_BATCH_MAX_MESSAGES: Input should be greater than 0"),
        ("WORKER_AUTO_OFFSET_RESET", "middle", "WORKER_AUTO_OFFSET_RESET: Input should be 'earliest' or 'latest'"),
        ("WORKER_METRICS_PORT", "http", "WORKER_METRICS_PORT: Input should be a valid integer"),
        ("WORKER_DEVICE", "tpu", "WORKER_DEVICE: must be auto, cpu, cuda, cuda:N or mps"),
        ("WORKER_DELIVERY", "maybe", "WORKER_DELIVERY: Input should be 'at_least_once' or 'exactly_once'"),
    ],
)
def test_invalid_values_fail_with_one_clear_line(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_dlq_must_differ(monkeypatch):
    monkeypatch.setenv("WORKER_DLQ_TOPIC", "comments")
    with pytest.raises(ConfigError, match="WORKER_DLQ_TOPIC must differ"):
        load_settings()


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(Exception):
        s.input_topic = "other"  # type: ignore[misc]


def test_labels_comma_separated(monkeypatch):
    monkeypatch.setenv("WORKER_LABELS", "bad, good")
    assert load_settings().labels == ["bad", "good"]


def test_cli_reports_invalid_settings_in_one_line(monkeypatch, capsys):
    from worker.cli import main

    monkeypatch.setenv("WORKER_BATCH_MAX_TOKENS", "-5")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worker: error: invalid settings: WORKER_BATCH_MAX_TOKENS")
    assert len(err.splitlines()) == 1
