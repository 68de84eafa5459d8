"""The rules file's parser (WORKER_ROUTES_FILE): what it accepts, its version, and one line per problem."""

from __future__ import annotations

import hashlib
import json

import pytest

from worker.wire.rules import RULES_VERSION_HEADER, parse_rules, rules_from, rules_version
from worker.wire.types import Prediction

RESERVED = ("in", "out", "dlq")
LABELS = ("negative", "positive")


def document(**fields) -> bytes:
    return json.dumps(fields).encode()


def parse(content: bytes, labels=LABELS, yaml: bool = False):
    return parse_rules(content, reserved_topics=RESERVED, model_labels=labels, yaml=yaml)


def test_a_document_gives_routes_thresholds_and_a_content_hash_as_version():
    content = document(routes=[{"name": "flagged", "topic": "flagged", "labels": ["negative"], "min_score": 0.9}],
                       thresholds={"negative": 0.7}, default_threshold=0.6)
    rules = parse(content)
    assert [r.name for r in rules.routes] == ["flagged"] and rules.topics == ("flagged",)
    assert rules.threshold("negative") == 0.7 and rules.threshold("positive") == 0.6
    assert rules.version == hashlib.sha256(content).hexdigest()[:12] == rules_version(content)
    negative = Prediction("negative", 0.95, {"negative": 0.95, "positive": 0.05}, False, 4)
    assert [r.name for r in rules.matching(negative)] == ["flagged"]


def test_every_field_is_optional_and_environment_rules_say_env():
    rules = parse(b"{}")
    assert rules.routes == () and rules.threshold("negative") == 0.5
    assert rules_from([]).version == "env"
    assert RULES_VERSION_HEADER == "worker.rules.version"


def test_yaml_is_read_when_asked():
    content = b"routes:\n  - name: review\n    topic: review\n    below: 0.6\nthresholds:\n  positive: 0.8\n"
    rules = parse(content, yaml=True)
    assert rules.routes[0].below == 0.6 and rules.threshold("positive") == 0.8


def test_the_same_content_has_the_same_version_and_any_change_another():
    a = document(routes=[{"name": "r", "topic": "t"}])
    assert parse(a).version == parse(bytes(a)).version != parse(a + b" ").version


@pytest.mark.parametrize("content, problem", [
    (b"{not json", "not valid JSON"),
    (b"\xff", "not UTF-8"),
    (b"[]", "must be an object"),
    (document(route=[]), "route: Extra inputs are not permitted"),
    (document(routes=[{"name": "r", "topic": "t", "min_score": 2}]), "routes[0].min_score"),
    (document(routes=[{"name": "r", "topic": "bad topic"}]), "routes[0].topic"),
    (document(routes=[{"name": "r", "topic": "a"}, {"name": "r", "topic": "b"}]), "route names must be unique: r"),
    (document(routes=[{"name": "r", "topic": "out"}]), "'out', which is the input, output or dead-letter topic"),
    (document(routes=[{"name": "r", "topic": "t", "labels": ["toxic"]}]), "names label(s) toxic the model does not have"),
    (document(thresholds={"toxic": 0.5}), "thresholds name category toxic the model does not have"),
    (document(thresholds={"negative": 1.5}), "thresholds.negative"),
    (document(default_threshold=-0.1), "default_threshold"),
])
def test_a_bad_document_is_one_line_naming_the_problem(content, problem):
    with pytest.raises(ValueError) as raised:
        parse(content)
    message = str(raised.value)
    assert problem in message and "\n" not in message


def test_yaml_errors_are_one_line_too():
    with pytest.raises(ValueError, match="not valid YAML") as raised:
        parse(b"routes: [\n  - {", yaml=True)
    assert "\n" not in str(raised.value)


def test_labels_are_checked_only_when_the_model_is_known():
    assert parse(document(routes=[{"name": "r", "topic": "t", "labels": ["toxic"]}]), labels=None).routes
