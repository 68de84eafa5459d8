"""The engine table (worker.engines.registry): settings → candidates, and the table as the one place engines are named."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from worker.engines import openvino_engine
from worker.engines.registry import ENGINES, candidates, hook, unavailable
from worker.engines.selection import Candidate
from worker.errors import ConfigError, ModelLoadError
from worker.settings import Settings, load_settings

WORKER = Path(__file__).resolve().parents[2] / "worker"


def test_auto_lists_every_installed_engine_and_precision():
    listed = candidates("auto", "auto")
    assert Candidate("torch", "float32") in listed and Candidate("torch", "bfloat16") in listed
    assert Candidate("onnxruntime", "int8") in listed and Candidate("openvino", "bfloat16") in listed
    assert Candidate("torch", "float16") not in listed  # only when asked for
    assert candidates("auto", "int8") == [Candidate("onnxruntime", "int8"), Candidate("openvino", "int8")]
    assert candidates("torch", "float16") == [Candidate("torch", "float16")]


def test_a_precision_the_engine_lacks_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="WORKER_DTYPE=int8 is not supported by WORKER_ENGINE=torch"):
        candidates("torch", "int8")
    with pytest.raises(ModelLoadError, match="WORKER_DTYPE=bfloat16 is not supported by WORKER_ENGINE=onnxruntime"):
        candidates("onnxruntime", "bfloat16")


def test_an_engine_that_is_not_installed(monkeypatch):
    monkeypatch.setattr(openvino_engine, "missing", lambda precision=None: "openvino is not installed (pip install x)")
    with pytest.raises(ModelLoadError, match="WORKER_ENGINE=openvino: openvino is not installed"):
        candidates("openvino", "auto")
    assert all(c.engine != "openvino" for c in candidates("auto", "auto"))


# --------------------------------------------------------------------------- the table is the one place engines are named
def test_every_engine_of_the_table_has_its_hooks():
    for name, engine in ENGINES.items():
        assert callable(hook(engine.build)), name
        for reference in (engine.missing, engine.is_exported):
            assert reference is None or callable(hook(reference)), (name, reference)
        assert engine.precisions and not set(engine.precisions) & set(engine.on_request), name


def test_every_candidate_resolves_through_the_table():
    listed = candidates("auto", "auto")
    assert [c.engine for c in listed] == sorted((c.engine for c in listed), key=list(ENGINES).index)
    assert {(c.engine, c.precision) for c in listed} <= {(n, p) for n, e in ENGINES.items() for p in e.precisions}
    for name in ENGINES:
        assert {c.precision for c in candidates(name, "auto")} == {
            p for p in ENGINES[name].precisions if unavailable(Candidate(name, p)) is None}


def test_settings_offer_exactly_the_engines_of_the_table():
    (choices,) = {typing.get_args(Settings.model_fields["engine"].annotation)}
    assert set(choices) == {"auto", *ENGINES}


def test_an_unknown_engine_is_refused():
    with pytest.raises(ConfigError, match="WORKER_ENGINE"):
        load_settings(engine="tensorrt")
    with pytest.raises(ModelLoadError, match="WORKER_ENGINE=tensorrt is not an engine"):
        candidates("tensorrt", "auto")


def test_no_engine_is_chosen_by_name_outside_the_table():
    names = "|".join(ENGINES)
    by_name = re.compile(rf"""engine\s*(==|!=)\s*["']({names})["']|engine\s+(not\s+)?in\s+\([^)]*["']({names})["']""")
    offenders = [str(p.relative_to(WORKER)) for p in WORKER.rglob("*.py") if by_name.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
