"""A local three-node Apache Kafka cluster (KRaft; every node a broker and a controller), each node a
LocalBroker run by deploy/kafka/kafka.sh on its own ports and data dir, with per-node faults."""

from __future__ import annotations

import base64
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.broker import LocalBroker


class LocalCluster:
    """``size`` nodes: node i (1-based) serves ``base_port + 2*(i-1)`` with its controller on the next port,
    and keeps its data in ``data_dir/node-i``. Topics are replicated ``size`` times (at most 3) and need
    2 in-sync replicas to take a write (kafka.sh KAFKA_REPLICATION). The nodes start together: none is
    ready before a majority of the controller quorum is up.

    As a context manager it is started on entry and every node stopped on exit (thawed first)."""

    def __init__(self, base_port: int, data_dir: Path, size: int = 3, stop_deadline_s: float = 60,
                 heap: str = "-Xms192m -Xmx384m") -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own ids: one starting with '-' reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        voters = ",".join(f"{i}@127.0.0.1:{base_port + 2 * (i - 1) + 1}" for i in range(1, size + 1))
        self.nodes: dict[int, LocalBroker] = {}
        for i in range(1, size + 1):
            variant = {
                "KAFKA_NODE_ID": str(i),
                "KAFKA_QUORUM_VOTERS": voters,
                "KAFKA_REPLICATION": str(min(size, 3)),
                "KAFKA_CLUSTER_ID": cluster_id,
                "KAFKA_HEAP_OPTS": heap,
                "KAFKA_STOP_TIMEOUT": "20",
                "KAFKA_START_TIMEOUT": "180",
            }
            self.nodes[i] = LocalBroker(base_port + 2 * (i - 1), data_dir / f"node-{i}", variant, stop_deadline_s)
        self.bootstrap = ",".join(node.bootstrap for node in self.nodes.values())

    def _each(self, action, ids=None) -> None:
        """``action(node)`` on the nodes (all by default) at once; the first error is raised after all ended."""
        targets = [self.nodes[i] for i in (ids or self.nodes)]
        with ThreadPoolExecutor(len(targets)) as pool:
            for future in [pool.submit(action, node) for node in targets]:
                future.result()

    def start(self) -> None:
        self._each(lambda node: node.run("start", timeout=240))

    def stop(self) -> None:
        def stop_one(node: LocalBroker) -> None:
            with contextlib.suppress(Exception):
                node.thaw()
            node.stop_within(node.stop_deadline_s)

        self._each(stop_one)

    def start_node(self, node_id: int) -> None:
        self.nodes[node_id].run("start", timeout=240)

    def stop_node(self, node_id: int) -> None:
        self.nodes[node_id].stop_within(self.nodes[node_id].stop_deadline_s)

    def kill_node(self, node_id: int) -> None:
        self.nodes[node_id].kill()

    def pause_node(self, node_id: int) -> None:
        self.nodes[node_id].freeze()

    def resume_node(self, node_id: int) -> None:
        self.nodes[node_id].thaw()

    def leader_of(self, topic: str, partition: int = 0) -> int | None:
        """The node that leads ``topic``'s partition now (None when the metadata cannot be read)."""
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(topic, timeout=5)
            leader = metadata.topics[topic].partitions[partition].leader
            return leader if leader in self.nodes else None
        except Exception:  # noqa: BLE001 - any failure: not known now
            return None

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
