"""Command line: ``worker run``, ``worker classify TEXT...``, ``worker eval TSV``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from worker.errors import WorkerError
from worker.settings import Settings, load_settings

log = logging.getLogger("worker")

SEED_SENTENCES = (
    "이 영화 정말 재밌다!",
    "시간 낭비였다. 최악의 영화",
    "배우들 연기가 좋아서 끝까지 몰입했어요",
    "스토리가 너무 지루하고 뻔하다",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        return f"{line} {json.dumps(fields, ensure_ascii=False, default=str)}" if fields else line


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("transformers", "httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def load_classifier(settings: Settings) -> Any:
    """The one place the worker builds its classifier: engine, precision and device from the settings (worker.engines)."""
    from worker.engines import load_classifier as build

    return build(settings)


def cmd_run(settings: Settings) -> int:
    from worker.app import Worker
    from worker.metrics import Health, MetricsServer, WorkerMetrics

    # Handlers first: a SIGTERM while the model loads must still end the process cleanly.
    worker: Worker | None = None
    signals_seen = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            os._exit(130)  # second signal: the operator wants out now
        if worker is not None:
            worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Tokenization runs on the loop thread beside inference; the tokenizer's own thread pool would
    # compete with torch for the cores (measured: 582 vs 511 messages/s end to end on 2 cores).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    metrics = WorkerMetrics()
    health = Health()
    server = None
    if settings.metrics_port:
        server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, health)
        server.start()
    try:
        log.info("starting", extra={"fields": {"settings": settings.masked_dump()}})
        classifier = load_classifier(settings)
        classifier.warm_up()
        metrics.describe_model(classifier)
        health.model_ready = True
        log.info("model ready", extra={"fields": {"labels": classifier.labels, **classifier.info}})
        worker = Worker(settings, classifier, metrics, health)
        if signals_seen:
            log.info("stop requested during start-up; nothing was consumed")
            return 0
        clean = worker.run()
    finally:
        if server is not None:
            server.stop()
    log.info("stopped", extra={"fields": {"clean": clean}})
    return 0 if clean else 3


def cmd_classify(settings: Settings, texts: Sequence[str], as_json: bool) -> int:
    from worker.model import KOREAN_LABELS, classify_encoded, to_prediction

    classifier = load_classifier(settings)
    texts = list(texts) or list(SEED_SENTENCES)
    encodings = classifier.encode(texts)
    outcome = classify_encoded(classifier, encodings, settings.sub_batch_max_tokens)
    for text, encoding, probs in zip(texts, encodings, outcome.probabilities):
        prediction = to_prediction(probs, classifier.labels, encoding)
        if as_json:
            print(json.dumps({"text": text, **prediction.__dict__}, ensure_ascii=False))
        else:
            print(f"{KOREAN_LABELS.get(prediction.label, prediction.label)} ({prediction.score:.2f}): {text}")
    return 0


def cmd_eval(settings: Settings, path: Path, limit: int | None, batch_messages: int, output: Path | None) -> int:
    from worker.evaluation import evaluate, read_nsmc

    rows = read_nsmc(path, limit)
    classifier = load_classifier(settings)
    classifier.warm_up()
    report = evaluate(classifier, rows, batch_messages, settings.sub_batch_max_tokens)
    report["model"] = classifier.info
    selection = getattr(classifier, "selection", None)
    if selection is not None:
        report["engine_selection"] = selection.to_json()
    print(json.dumps(report, ensure_ascii=False, indent=2))
    if output:
        output.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="Real-time Korean comment classification on Kafka. Configure with WORKER_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="consume, classify and publish until SIGTERM/SIGINT")
    classify = commands.add_parser("classify", help="classify the given texts and print one line each")
    classify.add_argument("texts", nargs="*", help="texts to classify (default: four sample sentences)")
    classify.add_argument("--json", action="store_true", help="print one JSON object per text")
    evaluate = commands.add_parser("eval", help="accuracy, F1 and throughput on an NSMC-format TSV")
    evaluate.add_argument("tsv", type=Path, help="file with columns id, document, label (tab separated, header row)")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N rows")
    evaluate.add_argument("--batch-messages", type=int, default=1024, help="texts per length-sorted window")
    evaluate.add_argument("--output", type=Path, default=None, help="also write the report as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        if args.command == "run":
            return cmd_run(settings)
        if args.command == "classify":
            return cmd_classify(settings, args.texts, args.json)
        return cmd_eval(settings, args.tsv, args.limit, args.batch_messages, args.output)
    except WorkerError as exc:
        print(f"worker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
