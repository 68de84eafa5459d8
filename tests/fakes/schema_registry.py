"""A fake SchemaPort (worker.wire.framing.SchemaPort): schemas by id, JSON bodies, a registry that can go away.

A schema here is the set of fields a body must have; the body is JSON (whatever the format). A schema
fetched once is cached, as the real adapter caches it, so `reachable = False` only stops new ids.
"""

from __future__ import annotations

import json
from typing import Any

from worker.wire.framing import Frame, RegistryUnreachable, UndecodableBody, UnknownSchema, frame


class FakeSchemas:
    def __init__(self, schemas: dict[int, set[str]] | None = None) -> None:
        self.schemas = dict(schemas or {})
        self.reachable = True
        self.fetched: dict[int, set[str]] = {}
        self.result_ids: dict[str, int] = {}
        self.fetches = 0

    def decode(self, schema_format: str, framed: Frame) -> Any:
        required = self.fetched.get(framed.schema_id)
        if required is None:
            if not self.reachable:
                raise RegistryUnreachable("connection refused (fake)")
            self.fetches += 1
            if framed.schema_id not in self.schemas:
                raise UnknownSchema("not found (fake)")
            required = self.fetched[framed.schema_id] = self.schemas[framed.schema_id]
        try:
            document = json.loads(framed.body)
        except ValueError as exc:
            raise UndecodableBody(str(exc)) from None
        if not isinstance(document, dict) or not required <= set(document):
            raise UndecodableBody(f"fields {sorted(required)} expected")
        return document

    def prepare(self, topics: list[str]) -> None:
        if not self.reachable:
            raise RegistryUnreachable("connection refused (fake)")
        for topic in topics:
            self.result_ids.setdefault(topic, 100 + len(self.result_ids))

    def encode(self, topic: str, result: dict[str, Any]) -> bytes:
        return frame(self.result_ids[topic], json.dumps(result, ensure_ascii=False).encode())


def framed(schema_id: int, document: Any) -> bytes:
    return frame(schema_id, json.dumps(document, ensure_ascii=False).encode())
