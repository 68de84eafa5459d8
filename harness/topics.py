"""Topics and ACLs on a broker: created (and visible), fresh names per test or run, deleted."""

from __future__ import annotations

import time
import uuid
from typing import Sequence

ROLES = ("input", "output", "dlq")


def create_topics(bootstrap: str, partitions_by_topic: dict[str, int], replication: int = 1) -> None:
    """Create the topics (``replication`` replicas; an existing one is fine) and wait until metadata shows every one
    with its partitions, so a client started next finds them."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=replication) for name, n in partitions_by_topic.items()]
    )
    for future in futures.values():
        try:
            future.result(30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    deadline = time.time() + 30
    while time.time() < deadline:
        metadata = admin.list_topics(timeout=10).topics
        if all(name in metadata and len(metadata[name].partitions) == n for name, n in partitions_by_topic.items()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"topics {list(partitions_by_topic)} not visible")


def fresh_topics(bootstrap: str, partitions: int = 3, create: Sequence[str] = ROLES, prefix: str = "",
                 replication: int = 1) -> dict[str, str]:
    """New input, output and dead-letter topic names (``{prefix}in-<random>``, ...); those named in ``create``
    are created, input and output with ``partitions`` partitions, the dead-letter topic with one."""
    suffix = uuid.uuid4().hex[:8]
    names = {"input": f"{prefix}in-{suffix}", "output": f"{prefix}out-{suffix}", "dlq": f"{prefix}dlq-{suffix}"}
    create_topics(bootstrap, {names[role]: 1 if role == "dlq" else partitions for role in create}, replication)
    return names


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures resolve
    for future in admin.delete_topics(list(names)).values():
        future.result(timeout=30)


def create_acls(bootstrap: str, bindings: Sequence) -> None:
    """Create ACL bindings (confluent_kafka AclBinding) as the super-user client of ``bootstrap``;
    waits until the broker has them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_acls(list(bindings)).values():
        future.result(30)
