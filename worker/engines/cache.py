"""The on-disk cache of exported models and of ``auto``'s measurements.

An exported model lives in a directory named after everything that could change its bytes: the
checkpoint (hub commit, or for a local directory the names, sizes and times of its files), the
engine, the precision and the versions of the libraries that wrote it. A new checkpoint or a library
upgrade gets a new directory; nothing stale is ever read.

Writers build into a private temporary directory beside the target and ``rename`` it into place,
which is atomic on one filesystem: two workers starting at once may both export, but each reads
either nothing or a complete directory, never a half-written file. The loser of the race drops its
copy and uses the winner's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from worker.engines.source import ModelSource

log = logging.getLogger(__name__)

# Bumped whenever the export or quantization code changes what it writes.
FORMAT_VERSION = 1


def library_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def directory_fingerprint(directory: Path) -> str:
    """A local model directory's identity: its path and its files' names, sizes and modification times."""
    entries = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".")
    )
    return f"dir:{directory.resolve()}:{entries}"


def model_fingerprint(source: ModelSource) -> str:
    """The checkpoint's identity: hub id + commit, or :func:`directory_fingerprint`."""
    directory = Path(source.model)
    if directory.is_dir():
        return directory_fingerprint(directory)
    return f"hub:{source.model}@{source.commit or source.revision}"


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slug(model: str) -> str:
    name = Path(model).name if Path(model).is_dir() else model.replace("/", "--")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"


class EngineCache:
    """Directories of exported models under ``root``; falls back to a temporary directory when ``root`` is not writable."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.expanduser(str(root)))

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            fallback = Path(tempfile.gettempdir()) / "koelectra-worker-engines"
            log.warning(
                "engine cache directory not writable; exports go to a temporary directory and are redone on the next start",
                extra={"fields": {"directory": str(self.root), "error": str(exc), "fallback": str(fallback)}},
            )
            self.root = fallback
            self.root.mkdir(parents=True, exist_ok=True)

    def artifact_name(self, source: ModelSource, name: str, libraries: dict[str, str]) -> str:
        return self.name_for(source.model, model_fingerprint(source), name, libraries)

    def name_for(self, model: str, fingerprint: str, name: str, libraries: dict[str, str]) -> str:
        return f"{_slug(model)}-{name}-{cache_key(FORMAT_VERSION, fingerprint, name, libraries)}"

    def has(self, dirname: str) -> bool:
        return (self.root / dirname / "complete").is_file()

    def get_or_build(self, dirname: str, build: Callable[[Path], None], what: str) -> Path:
        """The complete directory ``dirname``: cached, or built by ``build(tmp)`` into a temporary sibling and renamed."""
        target = self.root / dirname
        if (target / "complete").is_file():
            log.info("using cached export", extra={"fields": {"what": what, "directory": str(target)}})
            return target
        self.ensure_writable()  # may move the root to a temporary directory
        target = self.root / dirname
        if (target / "complete").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{dirname}.", dir=self.root))
        try:
            build(staging)
            (staging / "complete").write_text(json.dumps({"what": what}) + "\n")
            try:
                os.rename(staging, target)  # atomic; fails if another worker got there first
            except OSError:
                if not (target / "complete").is_file():
                    raise
                log.info("another process exported the same model first; using its copy", extra={"fields": {"what": what}})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        """Atomically (write a temporary file, then rename); a cache that cannot be written is only logged."""
        try:
            self.ensure_writable()
            staging = self.root / f".{name}.{uuid.uuid4().hex}"
            staging.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
            os.replace(staging, self.root / name)
        except OSError as exc:
            log.warning("could not cache the engine measurement", extra={"fields": {"error": str(exc)}})
