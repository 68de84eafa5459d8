"""The layers contract: imports run downward only (pyproject.toml, [tool.importlinter]), checked by import-linter.

The layers are the code map of the README: cli → app → publish → kafka_io → render → infer → intake/batch →
engines → settings → wire/policy → errors. A module that is in no layer escapes the contract, so every
module and package under worker/ must be named in the first one.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

from harness.paths import REPO


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_contract_is_kept() -> None:
    # In a child process: import-linter configures logging with disable_existing_loggers, which would
    # silence the worker's loggers for every test after this one.
    run = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
           "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"]
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _named(layers: list[str]) -> set[str]:
    return {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}


def test_every_module_of_the_worker_is_in_a_layer() -> None:
    named = _named(_contracts()[0]["layers"])
    worker = REPO / "worker"
    modules = {f"worker.{p.stem}" for p in worker.glob("*.py") if p.stem != "__init__"}
    modules |= {f"worker.{p.parent.name}" for p in worker.glob("*/__init__.py")}
    pipeline = {f"worker.pipeline.{p.stem}" for p in (worker / "pipeline").glob("*.py") if p.stem != "__init__"}
    covered = {m for m in modules | pipeline if m in named or any(n.startswith(m + ".") for n in named)}
    assert modules | pipeline == covered, f"modules in no layer: {sorted(modules | pipeline - covered)}"


def test_every_engine_module_is_in_the_engines_layers() -> None:
    named = _named(_contracts()[1]["layers"])
    engines = {f"worker.engines.{p.stem}" for p in (REPO / "worker" / "engines").glob("*.py") if p.stem != "__init__"}
    assert engines <= named, f"engine modules in no layer: {sorted(engines - named)}"
