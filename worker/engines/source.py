"""A checkpoint's tokenizer, configuration and labels (:class:`ModelSource`), and their snapshot in the engine cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from worker.engines.labels import resolve_labels
from worker.engines.text import TextEncoder
from worker.errors import ModelLoadError

SNAPSHOT_TOKENIZER = "tokenizer.json"
SNAPSHOT_SOURCE = "source.json"
# Bumped when source.json gains what older snapshots lack (2: the config's problem_type).
SNAPSHOT_VERSION = 2
SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"
# transformers' name in a config (PretrainedConfig.problem_type) for a model trained with a sigmoid per category.
MULTI_LABEL_CONFIG = "multi_label_classification"


def resolve_problem_type(config_problem_type: str | None, wanted: str = "auto") -> str:
    """single_label or multi_label: ``wanted`` (WORKER_PROBLEM_TYPE) unless it is auto, else what the config says."""
    if wanted in (SINGLE_LABEL, MULTI_LABEL):
        return wanted
    if wanted != "auto":
        raise ModelLoadError("problem_type", f"WORKER_PROBLEM_TYPE must be auto, single_label or multi_label, not {wanted!r}")
    return MULTI_LABEL if config_problem_type == MULTI_LABEL_CONFIG else SINGLE_LABEL


@dataclass
class ModelSource:
    """A checkpoint's tokenizer, configuration and labels: what every engine needs before it runs anything.

    Loading it reads no weights; :meth:`load_torch` does, for the torch engine and for exports.
    :meth:`save_snapshot`/:meth:`from_snapshot` keep the tokenizer and labels in the engine cache,
    so that ONNX Runtime and OpenVINO start without importing transformers or torch.
    """

    model: str
    requested_revision: str | None
    revision: str  # what results report: the hub commit, the requested revision, or "local"
    encoder: TextEncoder
    labels: list[str]
    id2label: dict[int, str]
    model_limit: int
    commit: str | None = None  # the hub commit, when the model came from the hub
    config: Any = None  # the transformers config, when transformers loaded it
    problem_type: str = SINGLE_LABEL  # single_label (a softmax over the classes) or multi_label (a sigmoid each)
    config_problem_type: str | None = None  # what the checkpoint's config says (kept in the snapshot)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == MULTI_LABEL

    @classmethod
    def load(
        cls,
        model: str,
        revision: str | None = None,
        max_length: int | None = None,
        positive_index: int | None = None,
        labels: Sequence[str] | None = None,
        problem_type: str = "auto",
    ) -> ModelSource:
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(model, revision=revision)
            tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(model, f"{exc}{_hub_hint(model)}") from exc
        limits = [n for n in (config.max_position_embeddings, tokenizer.model_max_length) if n and n < 1_000_000]
        model_limit = min(limits) if limits else 512
        commit = getattr(config, "_commit_hash", None)
        wanted = (max_length, positive_index, labels)
        return cls._assemble(model, revision, revision or commit or "local", commit, TextEncoder(tokenizer, model_limit),
                             config.id2label, model_limit, wanted, config, getattr(config, "problem_type", None),
                             problem_type)

    @classmethod
    def _assemble(
        cls, model: str, requested: str | None, revision: str, commit: str | None, encoder: TextEncoder,
        id2label: dict[Any, str], model_limit: int, wanted: tuple[int | None, int | None, Sequence[str] | None],
        config: Any = None,
        config_problem_type: str | None = None,
        problem_type: str = "auto",
    ) -> ModelSource:
        """The source with the operator's settings applied: ``wanted`` = (max_length, positive_index, labels),
        ``problem_type`` = WORKER_PROBLEM_TYPE."""
        max_length, positive_index, labels = wanted
        encoder.max_length = min(max_length or model_limit, model_limit)
        classes = {int(k): v for k, v in id2label.items()}
        resolved = resolve_problem_type(config_problem_type, problem_type)
        names = resolve_labels(classes, positive_index, labels, multi_label=resolved == MULTI_LABEL)
        return cls(model, requested, revision, encoder, names, classes, model_limit, commit, config, resolved,
                   config_problem_type)

    def save_snapshot(self, directory: Path) -> None:
        """The fast tokenizer's own JSON and what the labels and limits came from (needs a fast tokenizer)."""
        self.encoder.tokenizer.backend_tokenizer.save(str(directory / SNAPSHOT_TOKENIZER))
        (directory / SNAPSHOT_SOURCE).write_text(json.dumps({
            "revision": self.revision, "commit": self.commit, "id2label": self.id2label,
            "model_limit": self.model_limit, "pad_id": self.encoder.pad_id,
            "problem_type": self.config_problem_type,
        }, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def from_snapshot(
        cls,
        directory: Path,
        model: str,
        revision: str | None = None,
        max_length: int | None = None,
        positive_index: int | None = None,
        labels: Sequence[str] | None = None,
        problem_type: str = "auto",
    ) -> ModelSource:
        from tokenizers import Tokenizer

        saved = json.loads((directory / SNAPSHOT_SOURCE).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(directory / SNAPSHOT_TOKENIZER))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        limit = saved["model_limit"]
        return cls._assemble(model, revision, saved["revision"], saved["commit"], TextEncoder(tokenizer, limit, saved["pad_id"]),
                             saved["id2label"], limit, (max_length, positive_index, labels), None,
                             saved.get("problem_type"), problem_type)

    def load_torch(self, device: str = "cpu", dtype: str = "float32") -> Any:
        """The transformers model on ``device`` in ``dtype``, in eval mode."""
        import torch
        from transformers import AutoModelForSequenceClassification

        try:
            extra = {"config": self.config} if self.config is not None else {}
            network = AutoModelForSequenceClassification.from_pretrained(
                self.model, revision=self.requested_revision, **extra
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(self.model, f"{exc}{_hub_hint(self.model)}") from exc
        return network.to(device=device, dtype=getattr(torch, dtype)).eval()


def _hub_hint(model: str) -> str:
    return "" if Path(model).is_dir() else " (a hub id needs network access to the Hugging Face Hub, or a local directory)"
