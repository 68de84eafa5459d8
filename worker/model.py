"""Loading the sequence-classification model, warming it up, and predicting.

The rest of the worker talks to a :class:`Classifier` (a small protocol), so tests
can pass a fake and the loop never touches torch directly.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from worker.batching import padding_efficiency, plan_sub_batches
from worker.errors import ModelLoadError
from worker.records import Prediction

log = logging.getLogger(__name__)

KOREAN_LABELS = {"positive": "긍정", "negative": "부정"}
# Names that say which class they are; generic names (0/1, LABEL_0/LABEL_1) say nothing.
_NEGATIVE_NAMES = {"neg", "negative", "부정"}
_POSITIVE_NAMES = {"pos", "positive", "긍정"}


@dataclass(frozen=True)
class Encoding:
    """Token ids of one text, with special tokens, already cut to the model's limit."""

    ids: list[int]
    truncated: bool


class Classifier(Protocol):
    labels: list[str]
    info: dict[str, str]

    def encode(self, texts: Sequence[str]) -> list[Encoding]: ...

    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities for each id sequence; the caller keeps batches length-homogeneous."""
        ...


def _meaning(name: str) -> str | None:
    lowered = name.strip().lower()
    if lowered in _POSITIVE_NAMES:
        return "positive"
    if lowered in _NEGATIVE_NAMES:
        return "negative"
    return None


def resolve_labels(
    id2label: dict[int, str], positive_index: int | None = None, override: Sequence[str] | None = None
) -> list[str]:
    """Label names in class order.

    Binary checkpoints name their classes ``0``/``1``, ``LABEL_0``/``LABEL_1``,
    ``Neg``/``Pos`` and so on; all become ``negative``/``positive``. Names that say
    which is which (``Neg``/``Pos``) are believed; otherwise class 1 is positive.
    ``positive_index``, when set, overrides both. Models with more classes keep
    their own names.
    """
    count = len(id2label)
    if override:
        if len(override) != count:
            raise ModelLoadError("labels", f"WORKER_LABELS names {len(override)} labels, the model has {count}")
        return list(override)
    names = [str(id2label[i]) for i in range(count)]
    if count != 2:
        return names
    if positive_index is None:
        meanings = [_meaning(n) for n in names]
        if sorted(m or "" for m in meanings) == ["negative", "positive"]:
            return meanings  # type: ignore[return-value]
        positive_index = 1
    if positive_index not in (0, 1):
        raise ModelLoadError("labels", f"WORKER_POSITIVE_INDEX must be 0 or 1 for a binary model, not {positive_index}")
    return ["positive" if i == positive_index else "negative" for i in range(2)]


def to_prediction(probabilities: Sequence[float], labels: Sequence[str], encoding: Encoding) -> Prediction:
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return Prediction(
        label=labels[best],
        score=float(probabilities[best]),
        probabilities={label: float(p) for label, p in zip(labels, probabilities)},
        truncated=encoding.truncated,
        tokens=len(encoding.ids),
    )


@dataclass(frozen=True)
class BatchOutcome:
    probabilities: list[list[float]]
    real_tokens: int
    padded_tokens: int
    passes: int


def classify_encoded(classifier: Classifier, encodings: Sequence[Encoding], sub_batch_max_tokens: int) -> BatchOutcome:
    """Length-sorted sub-batches through the classifier; results in input order."""
    lengths = [len(e.ids) for e in encodings]
    plan = plan_sub_batches(lengths, sub_batch_max_tokens)
    results: list[list[float]] = [[] for _ in encodings]
    for group in plan:
        for index, probs in zip(group, classifier.predict([encodings[i].ids for i in group])):
            results[index] = probs
    real, padded = padding_efficiency(lengths, plan)
    return BatchOutcome(results, real, padded, len(plan))


def cpu_supports_bf16() -> bool:
    """AVX-512 BF16 or AMX: where bfloat16 matmuls beat float32 on the CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device", f"WORKER_DEVICE={requested} but no CUDA device is available")
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if device == "cpu" and cpu_supports_bf16() else "float32"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class HFClassifier:
    """A transformers sequence-classification model and its tokenizer. Build it with :meth:`load`."""

    def __init__(self, tokenizer: Any, model: Any, labels: list[str], max_length: int, info: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.labels = labels
        self.max_length = max_length
        self.info = info
        self._device = next(model.parameters()).device
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(
        cls,
        model: str,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        max_length: int | None = None,
        positive_index: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> HFClassifier:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        if resolved_device == "cpu":
            torch.set_num_threads(threads or usable_cpus())
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
            network = AutoModelForSequenceClassification.from_pretrained(model, revision=revision)
        except (OSError, ValueError) as exc:
            hint = "" if Path(model).is_dir() else " (a hub id needs network access to the Hugging Face Hub, or a local directory)"
            raise ModelLoadError(model, f"{exc}{hint}") from exc
        network = network.to(device=resolved_device, dtype=getattr(torch, resolved_dtype)).eval()
        config = network.config
        limits = [n for n in (config.max_position_embeddings, tokenizer.model_max_length) if n and n < 1_000_000]
        model_limit = min(limits) if limits else 512
        id2label = {int(k): v for k, v in config.id2label.items()}
        info = {
            "model": model,
            "revision": revision or getattr(config, "_commit_hash", None) or "local",
            "device": resolved_device,
            "dtype": resolved_dtype,
        }
        classifier = cls(
            tokenizer,
            network,
            resolve_labels(id2label, positive_index, labels),
            min(max_length or model_limit, model_limit),
            info,
        )
        log.info(
            "model loaded",
            extra={"fields": {**info, "labels": classifier.labels, "max_length": classifier.max_length,
                              "load_s": round(time.perf_counter() - started, 2)}},
        )
        return classifier

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        # Tokenize untruncated once, then cut by hand: one pass tells both the ids and
        # whether the text was too long.
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        limit = self.max_length
        return [
            Encoding(ids, False) if len(ids) <= limit else Encoding(ids[: limit - 1] + ids[-1:], True)
            for ids in encoded
        ]

    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self._device), attention_mask=attention.to(self._device)
            ).logits
            return torch.softmax(logits.float(), dim=-1).cpu().tolist()

    def warm_up(self) -> None:
        """Run a few shapes once so the first real batch does not pay for lazy initialisation."""
        for text in ("워밍업", "워밍업 " * 40):
            encodings = self.encode([text] * 8)
            classify_encoded(self, encodings, 4096)
