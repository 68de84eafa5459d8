"""Every knob of the worker, read from ``WORKER_*`` environment variables (and ``.env``).

This is the only module that reads the environment. Everything else receives a
frozen :class:`Settings` object.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from worker.errors import ConfigError
from worker.wire.results import parse_result_fields
from worker.wire.routing import Route, check_routes

ENV_PREFIX = "WORKER_"
DEFAULT_MODEL = "daekeun-ml/koelectra-small-v3-nsmc"

# librdkafka properties are dotted (``sasl.password``); environment variables cannot
# hold dots, so ``WORKER_KAFKA_SASL_PASSWORD`` maps to ``sasl.password``. No
# librdkafka property contains an underscore, so the mapping is unambiguous.
_PASS_THROUGH_SCOPES = {
    # Schema Registry client properties (confluent_kafka.schema_registry, also dotted) likewise;
    # WORKER_SCHEMA_REGISTRY_URL is the field of its own, not a property.
    "SCHEMA_REGISTRY_": "schema_registry",
    "KAFKA_CONSUMER_": "kafka_consumer",
    "KAFKA_PRODUCER_": "kafka_producer",
    "KAFKA_": "kafka",
}

_SECRET_KEY = re.compile(r"password|secret|\.key\b|key\.pem|token|credentials|user\.info", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


class _KafkaPassThroughSource(PydanticBaseSettingsSource):
    """Collects ``WORKER_KAFKA_*`` variables from the environment and ``.env`` into dicts."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: str | None) -> None:
        super().__init__(settings_cls)
        self._env_file = env_file

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        variables: dict[str, str] = {}
        if self._env_file and Path(self._env_file).is_file():
            from dotenv import dotenv_values

            variables.update({k: v for k, v in dotenv_values(self._env_file).items() if v is not None})
        variables.update(os.environ)
        scopes: dict[str, dict[str, str]] = {}
        for name, value in variables.items():
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX):
                continue
            rest = upper[len(ENV_PREFIX):]
            for prefix, field in _PASS_THROUGH_SCOPES.items():
                if rest.startswith(prefix) and len(rest) > len(prefix):
                    prop = rest[len(prefix):].lower().replace("_", ".")
                    if field == "schema_registry" and prop == "url":
                        break
                    scopes.setdefault(field, {})[prop] = value
                    break
        return scopes


class Settings(BaseSettings):
    """Worker configuration. Field ``foo_bar`` is set by ``WORKER_FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Kafka ---
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated.")
    input_topic: str = Field("comments", min_length=1, description="Topic the comments are read from.")
    output_topic: str = Field("comments-classified", min_length=1, description="Topic the results are written to.")
    dlq_topic: str = Field("comments-dlq", min_length=1, description="Dead-letter topic for records that cannot be classified.")
    group_id: str = Field("koelectra-worker", min_length=1, description="Consumer group; workers sharing it share the partitions.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts reading."
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="Delivery guarantee: at_least_once, or exactly_once with Kafka transactions."
    )
    transactional_id: str | None = Field(
        None, description="Transactional id for exactly_once (default: group id + host name; must be unique per worker)."
    )
    kafka: dict[str, str | SecretStr] = Field(
        default_factory=dict, description="Any librdkafka property for consumer and producer, dots as underscores: WORKER_KAFKA_SASL_PASSWORD sets sasl.password."
    )
    kafka_consumer: dict[str, str | SecretStr] = Field(
        default_factory=dict, description="librdkafka property for the consumer only (e.g. WORKER_KAFKA_CONSUMER_SESSION_TIMEOUT_MS)."
    )
    kafka_producer: dict[str, str | SecretStr] = Field(
        default_factory=dict, description="librdkafka property for the producer only (e.g. WORKER_KAFKA_PRODUCER_LINGER_MS)."
    )

    routes: list[Route] = Field(
        default_factory=list,
        description='Moderation routes, a JSON list: each result is also copied to the topic of every rule that matches its label and score, e.g. [{"name": "flagged", "topic": "comments-flagged", "labels": ["negative"], "min_score": 0.9}, {"name": "review", "topic": "comments-review", "below": 0.6}].',
    )

    routes_file: Path | None = Field(
        None,
        description='Moderation rules from a file instead of WORKER_ROUTES (not both): a JSON (or .yaml/.yml) object {"routes": [...as WORKER_ROUTES...], "thresholds": {"category": 0.7}, "default_threshold": 0.5}. SIGHUP or a change of the file reloads it between windows without leaving the group; an invalid new file keeps the rules in force. Every result carries the header worker.rules.version (the first 12 hex digits of the file\'s SHA-256; env for WORKER_ROUTES).',
    )

    # --- Input ---
    input_format: Literal["text", "json", "avro", "protobuf", "json_schema"] = Field(
        "text",
        description="Input record value: raw UTF-8 text, a JSON object, or a Schema Registry record (avro, protobuf, json_schema: Confluent wire format, decoded with the schema it names in WORKER_SCHEMA_REGISTRY_URL).",
    )
    text_field: str = Field("text", min_length=1, description="Dotted path to the text inside a JSON or Schema Registry input (e.g. comment.body).")
    output_format: Literal["json", "avro", "protobuf", "json_schema"] = Field(
        "json",
        description="Result record value: strict JSON, or avro, protobuf, json_schema with the worker's result schema registered under each destination topic's subject (<topic>-value). Dead letters keep the original bytes.",
    )
    schema_registry_url: str | None = Field(
        None, description="Schema Registry (Confluent API) URL, for the avro, protobuf and json_schema formats; e.g. http://registry:8080/apis/ccompat/v7."
    )
    schema_registry: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="Any Schema Registry client property, dots as underscores: WORKER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO sets basic.auth.user.info (user:password).",
    )
    max_message_bytes: int = Field(
        960_000,
        ge=10_000,
        description="Byte budget of every record the worker writes (key + value + headers, counted as for the producer's message.max.bytes): larger results are cut, larger dead letters are cut copies; input values over it are dead-lettered as too_large. Keep it below message.max.bytes (1000000) and the topics' max.message.bytes.",
    )
    result_fields: str = Field(
        "all",
        description="Fields of a result, comma separated (input, text, label, score, labels, probabilities, truncated, tokens, model, source, latency_ms, classified_at), or all, or lean (all but input and text); label and score are always there.",
    )

    # --- Model ---
    model: str = Field(DEFAULT_MODEL, min_length=1, description="Hugging Face hub id or local model directory.")
    model_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto",
        description="Inference engine. auto times the installed engines and precisions at start-up (cached per machine) and keeps the fastest that agrees with float32 torch; on CUDA only torch runs.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto",
        description="Precision. auto: measured with the engine (on CUDA bfloat16, else float16); a value forces it (int8: onnxruntime and openvino; float16: torch).",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the torch engine at start-up: auto does it when WORKER_ENGINE=torch runs a full-size model in bfloat16 on the CPU (about a minute of start-up); on: also after WORKER_ENGINE=auto chose torch.",
    )
    torch_threads: int | None = Field(None, gt=0, description="Intra-op threads for inference, every engine (default: usable CPU cores).")
    engine_cache_dir: str = Field(
        "~/.cache/koelectra-worker/engines",
        min_length=1,
        description="Exported models and auto's measurements, keyed by model, revision, engine, precision, library versions and CPU.",
    )
    engine_remeasure: bool = Field(
        False, description="Measure the engines again at start-up even if this machine's measurement is cached."
    )
    max_length: int | None = Field(None, gt=2, description="Token limit per text (default: the model's, 512); longer texts are truncated.")
    positive_index: int | None = Field(
        None, ge=0, le=1, description="For binary models: the class that means positive (default: from the label names, else 1)."
    )
    labels: list[str] | None = Field(None, description="Override the model's label names, comma separated, in class order.")
    problem_type: Literal["auto", "single_label", "multi_label"] = Field(
        "auto",
        description="auto: as the model's config says (problem_type multi_label_classification: multi-label, else single-label); single_label: one softmax over the labels; multi_label: a sigmoid per category (a comment can be several at once).",
    )
    label_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description='Multi-label models: the probability at which each category counts as present (the result\'s labels), a JSON object, e.g. {"hate": 0.7, "insult": 0.6, "default": 0.5}; "default" applies to unnamed categories (0.5 when absent). Each in (0, 1]; every category must be one of the model\'s.',
    )

    # --- Batching ---
    batch_max_messages: int = Field(512, gt=0, description="A batch closes at this many messages...")
    batch_max_tokens: int = Field(16384, gt=0, description="...or at this many real tokens...")
    # 0: a window goes to the model the moment the model is free; while it is busy the next window
    # keeps filling anyway, so waiting only adds latency (measured: p50 29 -> 13 ms at 100 msg/s,
    # same saturated throughput; benchmarks/README.md).
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="...or this long after its first message, whichever comes first (0: as soon as the model is free)."
    )
    sub_batch_max_tokens: int = Field(
        1024, gt=0, description="Padded tokens per forward pass; a batch is length-sorted and split to fit."
    )
    max_in_flight_messages: int = Field(
        4096, gt=0, description="Consumption pauses while this many messages are between the consumer and an acknowledged result."
    )
    max_in_flight_bytes: int = Field(
        128 * 1024 * 1024, gt=0,
        description="...or while their keys, values and headers add up to this many bytes (each also lives on as its result and in the client's buffers), so memory is bounded whatever the record size.",
    )

    # --- Operations ---
    shutdown_timeout_s: float = Field(
        30.0, gt=0,
        description="On SIGTERM/SIGINT, finish in-flight work, commit and leave the group within this many seconds (the process ends by then plus a few seconds, whatever the broker does).",
    )
    access_failure_timeout_s: float = Field(
        60.0, gt=0,
        description="Credentials or permissions refused by the cluster make the worker not-ready at once and end it (exit 4) after this many seconds.",
    )
    model_stuck_after_s: float = Field(
        30.0, gt=0,
        description="A window may take this long on the model at least; past max(this, WORKER_MODEL_STUCK_FACTOR × its expected time at the measured speed) the model counts as stuck: not-ready and exit 4 (model_stuck).",
    )
    model_stuck_factor: float = Field(
        20.0, ge=1,
        description="How many times its expected time (its tokens at the speed measured on earlier windows) a window may take on the model before it counts as stuck.",
    )
    group_silence_timeout_s: float | None = Field(
        None, gt=0,
        description="No answer from the consumer group's coordinator (heartbeats, joins, commits: read from the librdkafka statistics) for this long makes the worker not-ready and ends it (exit 4, group_stuck), so its supervisor starts a fresh client: librdkafka can leave a consumer outside its group for good after the coordinator's broker restarts. Default: the consumer's max.poll.interval.ms + 60 s, as a rebalance may rightly wait that long for a slow member. Needs WORKER_STATISTICS_INTERVAL_MS > 0.",
    )
    fatal_linger_s: float = Field(
        5.0, ge=0,
        description="After a fatal error, keep answering /readyz (503, with the reason) and /metrics this long before exiting, so monitoring sees why.",
    )
    metrics_host: str = Field("0.0.0.0", description="Bind address of the /metrics, /healthz and /readyz server.")
    metrics_port: int = Field(8000, ge=0, le=65535, description="Port of that server; 0 disables it.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text, or one JSON object per line.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    statistics_interval_ms: int = Field(5000, ge=0, description="librdkafka statistics period (feeds the lag gauge); 0 disables.")

    # --- Shadow model ---
    shadow_model: str | None = Field(
        None,
        description="A second model (hub id or local directory) that also scores every window; its results go to WORKER_SHADOW_TOPIC only, never to routes or in place of the primary's. Best effort: dropped for a window when it is behind, switched off after repeated failures.",
    )
    shadow_revision: str | None = Field(None, description="Hub revision of the shadow model.")
    shadow_engine: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="Inference engine of the shadow model (as WORKER_ENGINE)."
    )
    shadow_dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto", description="Precision of the shadow model (as WORKER_DTYPE)."
    )
    shadow_threads: int = Field(
        1, gt=0,
        description="Intra-op threads of the shadow model, so it takes little from the primary (torch's thread count is process-wide: a torch shadow runs with the primary's).",
    )
    shadow_topic: str | None = Field(None, description="Topic of the shadow model's results; required with WORKER_SHADOW_MODEL.")
    shadow_max_failures: int = Field(
        3, gt=0, description="The shadow model is switched off after this many windows in a row failed."
    )
    shadow_max_behind_windows: int = Field(
        2, gt=0,
        description="Windows that may wait for the shadow model; a window that finds this many waiting is not scored by the shadow (counted as dropped_behind).",
    )
    shadow_window_timeout_s: float = Field(
        60.0, gt=0, description="The shadow model is switched off when one window takes it longer than this."
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("label_thresholds")
    @classmethod
    def _check_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for category, threshold in value.items():
            if not category:
                raise ValueError("a category name cannot be empty")
            if not 0 < threshold <= 1:
                raise ValueError(f"the threshold of {category!r} must lie in (0, 1], not {threshold}")
        return value

    @field_validator("result_fields")
    @classmethod
    def _check_result_fields(cls, value: str) -> str:
        parse_result_fields(value)  # raises ValueError naming the unknown field
        return value

    @property
    def result_field_names(self) -> tuple[str, ...]:
        """The fields a result carries, in output order (see worker.wire.results.parse_result_fields)."""
        return parse_result_fields(self.result_fields)

    @property
    def reserved_topics(self) -> tuple[str, str, str]:
        """The topics no route may write to: input, output and dead-letter."""
        return (self.input_topic, self.output_topic, self.dlq_topic)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("kafka", "kafka_consumer", "kafka_producer", "schema_registry", mode="after")
    @classmethod
    def _mask_secrets(cls, value: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        return {
            key: SecretStr(v) if isinstance(v, str) and is_secret_key(key) else v for key, v in value.items()
        }

    @property
    def uses_schema_registry(self) -> bool:
        return self.input_format in ("avro", "protobuf", "json_schema") or self.output_format != "json"

    def schema_registry_properties(self) -> dict[str, str]:
        """The pass-through Schema Registry client properties, secrets revealed."""
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in self.schema_registry.items()}

    @model_validator(mode="after")
    def _check_schema_registry(self) -> Settings:
        if self.uses_schema_registry and not self.schema_registry_url:
            raise ValueError(
                f"WORKER_SCHEMA_REGISTRY_URL is needed for WORKER_INPUT_FORMAT={self.input_format} "
                f"and WORKER_OUTPUT_FORMAT={self.output_format}"
            )
        return self

    @model_validator(mode="after")
    def _check_topics(self) -> Settings:
        if self.dlq_topic in (self.input_topic, self.output_topic):
            raise ValueError("WORKER_DLQ_TOPIC must differ from the input and output topics")
        if self.input_topic == self.output_topic:
            raise ValueError("WORKER_OUTPUT_TOPIC must differ from WORKER_INPUT_TOPIC")
        if self.routes_file is not None and "routes" in self.model_fields_set:
            raise ValueError("WORKER_ROUTES and WORKER_ROUTES_FILE are both set: use one of them")
        if self.routes_file is not None and self.label_thresholds:
            raise ValueError("WORKER_LABEL_THRESHOLDS and WORKER_ROUTES_FILE are both set: put the thresholds in the file "
                             "(its \"thresholds\" and \"default_threshold\")")
        try:
            check_routes(self.routes, self.reserved_topics)
        except ValueError as exc:
            raise ValueError(f"WORKER_ROUTES: {exc}") from None
        if self.shadow_model is not None and self.shadow_topic is None:
            raise ValueError("WORKER_SHADOW_TOPIC is required with WORKER_SHADOW_MODEL")
        if self.shadow_topic is not None:
            if self.shadow_model is None:
                raise ValueError("WORKER_SHADOW_TOPIC is set but WORKER_SHADOW_MODEL is not")
            taken = (self.input_topic, self.output_topic, self.dlq_topic, *(r.topic for r in self.routes))
            if self.shadow_topic in taken:
                raise ValueError("WORKER_SHADOW_TOPIC must differ from the input, output, dead-letter and route topics")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_file = settings_cls.model_config.get("env_file")
        return (
            init_settings,
            _KafkaPassThroughSource(settings_cls, env_file if isinstance(env_file, str) else None),
            env_settings,
            dotenv_settings,
            file_secret_settings,
        )

    @property
    def transaction_timeout_s(self) -> float:
        """The producer's ``transaction.timeout.ms`` (``WORKER_KAFKA_[PRODUCER_]TRANSACTION_TIMEOUT_MS``), in seconds."""
        return int(self.librdkafka("producer").get("transaction.timeout.ms", 60000)) / 1000

    @property
    def group_silence_limit_s(self) -> float:
        """How long the group coordinator may stay silent before the consumer counts as stuck outside its group."""
        if self.group_silence_timeout_s is not None:
            return self.group_silence_timeout_s
        return int(self.librdkafka("consumer").get("max.poll.interval.ms", 300_000)) / 1000 + 60

    def librdkafka(self, role: Literal["consumer", "producer", "common"]) -> dict[str, str]:
        """The pass-through librdkafka settings for one client (``common``: the shared ones), secrets revealed."""
        own = {"consumer": self.kafka_consumer, "producer": self.kafka_producer}.get(role, {})
        merged = {**self.kafka, **own}
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in merged.items()}

    def masked_dump(self) -> dict[str, Any]:
        """Effective settings for logs, with every secret replaced by ``**********``."""
        dump = self.model_dump()
        for scope in ("kafka", "kafka_consumer", "kafka_producer", "schema_registry"):
            dump[scope] = {k: "**********" if is_secret_key(k) else str(v) for k, v in dump[scope].items()}
        if dump.get("schema_registry_url"):  # a URL may carry user:password@
            dump["schema_registry_url"] = re.sub(r"//[^/@]*@", "//**********@", dump["schema_registry_url"])
        return dump


def _variable_name(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "settings"
    name = f"{ENV_PREFIX}{str(loc[0]).upper()}"
    if len(loc) > 1 and (str(loc[0]).startswith("kafka") or loc[0] == "schema_registry"):
        name += "_" + str(loc[1]).upper().replace(".", "_")
    elif len(loc) > 1:  # inside a JSON value, e.g. WORKER_ROUTES[1].min_score
        name += "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    return name


def otel_environment() -> dict[str, str]:
    """The standard ``OTEL_*`` variables (OpenTelemetry's own; :mod:`worker.tracing` decides from them, the SDK reads them)."""
    return {name: value for name, value in os.environ.items() if name.startswith("OTEL_")}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; invalid values raise one readable ConfigError."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        # pydantic-settings could not even parse a value (e.g. WORKER_ROUTES is not JSON).
        match = re.search(r'field "(\w+)"', str(exc))
        variable = f"{ENV_PREFIX}{match.group(1).upper()}" if match else "settings"
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid settings: {variable}: not valid JSON{cause}") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            loc = error.get("loc", ())
            problems.append(message if not loc else f"{_variable_name(loc)}: {message}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def reference_table() -> str:
    """The configuration table of docs/configuration.md, generated from the fields above (a test keeps them equal)."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None or default == {} or default == []:
            shown = "—"
        else:
            shown = f"`{default}`"
        variable = f"`{ENV_PREFIX}{name.upper()}`"
        if name.startswith("kafka") or name == "schema_registry":
            variable = f"`{ENV_PREFIX}{name.upper()}_<PROPERTY>`"
        lines.append(f"| {variable} | {shown} | {field.description or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_table())
