"""Test-side Kafka clients: producing inputs, reading outputs back, counting results per key."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from confluent_kafka import Consumer, Producer


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple],
    headers: Any = None,
    producer_config: dict[str, Any] | None = None,
) -> list[int]:
    """Produce ``records`` in order and return each one's offset. A record is (key, value), (key, value,
    headers) or (key, value, headers, timestamp_ms or None); ``headers`` applies to those without their own.
    ``producer_config`` adds to or overrides the idempotent producer's settings (size limits, batching).
    Raises if any record is not delivered."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    config.update(producer_config or {})
    producer = Producer(config)
    offsets: list[int | None] = [None] * len(records)
    failures: list[str] = []

    def report_for(index: int) -> Callable[[Any, Any], None]:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(f"record {index}: {error.str()}")
            else:
                offsets[index] = message.offset()

        return report

    for index, (key, value, *own) in enumerate(records):
        extra = {"timestamp": own[1]} if len(own) > 1 and own[1] is not None else {}
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=own[0] if own else headers,
                                 on_delivery=report_for(index), **extra)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise AssertionError("input records not delivered")
    if failures:
        raise AssertionError(failures[:5])
    return [offset for offset in offsets if offset is not None]


def feed(bootstrap: str, topic: str, rows, count: int) -> list[str]:
    """`count` NSMC documents (the rows repeated as needed), each under its own key; returns the keys."""
    rows = (rows * (count // len(rows) + 1))[:count]
    keys = [f"{i}-{doc_id}" for i, (doc_id, _, _) in enumerate(rows)]
    produce(bootstrap, topic, [(k.encode(), doc.encode()) for k, (_, doc, _) in zip(keys, rows)])
    return keys


@dataclass
class OutputRecord:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    partition: int
    offset: int

    def json(self) -> Any:
        return json.loads(self.value) if self.value is not None else None


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 120,
    idle_s: float = 5,
    read_committed: bool = True,
) -> list[OutputRecord]:
    """Read a topic from the beginning until `expected` records arrived (then `idle_s` more, to catch
    duplicates), or until nothing came for `idle_s` when `expected` is None, or the timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    out: list[OutputRecord] = []
    deadline = time.time() + timeout_s
    last_arrival = time.time()
    try:
        while time.time() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error():
                    continue
                out.append(
                    OutputRecord(
                        message.key(),
                        message.value(),
                        {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])},
                        message.partition(),
                        message.offset(),
                    )
                )
                last_arrival = time.time()
            quiet = time.time() - last_arrival
            if expected is not None and len(out) >= expected and quiet >= min(idle_s, 2):
                break
            if expected is None and quiet >= idle_s:
                break
    finally:
        consumer.close()
    return out


def count_results(bootstrap: str, topic: str, keys: list[str], timeout_s: float = 240,
                  read_committed: bool = True) -> Counter:
    """Results per key, read until every key has one (then a few idle seconds, for duplicates)."""
    results = consume_all(bootstrap, topic, expected=len(keys), timeout_s=timeout_s, idle_s=4,
                          read_committed=read_committed)
    counts = Counter(r.key.decode() for r in results)
    assert set(counts) <= set(keys), "results for keys never sent"
    return counts


def summarize(name: str, keys: list[str], counts, report) -> tuple[int, int]:
    """Missing and duplicated results of `keys` in `counts` (a Counter by key), reported under `name`."""
    missing = sum(1 for k in keys if counts[k] == 0)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    report(name, inputs=len(keys), results=sum(counts.values()), missing=missing, duplicates=duplicates)
    return missing, duplicates
