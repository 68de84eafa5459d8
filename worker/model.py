"""Loading the sequence-classification model, warming it up, and predicting.

The rest of the worker talks to a :class:`Classifier` (a small protocol), so tests
can pass a fake and the loop never touches torch directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from worker.pipeline.batch import padding_efficiency, plan_sub_batches
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

    def warm_up(self) -> None:
        """Make the first real batch as fast as the rest (run once before serving)."""
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
    """AVX-512 BF16 or AMX in the CPU flags (reported by the benchmark; engine choice is measured, not read from flags)."""
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
    """The torch dtype when nothing was measured: CUDA's half type, else what the CPU flags suggest.

    ``worker.engines`` measures instead where it has a choice; this is the fallback for a
    direct :meth:`HFClassifier.load` and for CUDA.
    """
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


def softmax(logits: Any) -> list[list[float]]:
    """Row-wise softmax of a numpy array of logits, in float32 whatever the engine computed in."""
    import numpy as np

    values = np.asarray(logits, dtype=np.float32)
    values = np.exp(values - values.max(axis=-1, keepdims=True))
    return (values / values.sum(axis=-1, keepdims=True)).tolist()


class TextEncoder:
    """The tokenizer side every engine shares: ids cut to the model's limit, and padded numpy batches.

    ``tokenizer`` is a transformers tokenizer, or the ``tokenizers.Tokenizer`` behind a fast one
    (what an engine cache snapshot holds: the same ids without importing transformers or torch).
    """

    def __init__(self, tokenizer: Any, max_length: int, pad_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._backend = not hasattr(tokenizer, "pad_token_id")  # a tokenizers.Tokenizer
        if pad_id is None:
            pad_id = None if self._backend else tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else 0

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        # Tokenize untruncated once, then cut by hand: one pass tells both the ids and
        # whether the text was too long.
        if self._backend:
            encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]
        else:
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

    def pad(self, batch: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """(input_ids, attention_mask) as int64 arrays padded to the longest row: one buffer, filled row by row."""
        import numpy as np

        lengths = [len(ids) for ids in batch]
        width = max(lengths)
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(batch), width), dtype=np.int64)
        for row, (ids, length) in enumerate(zip(batch, lengths)):
            input_ids[row, :length] = ids
            attention[row, :length] = 1
        return input_ids, attention


SNAPSHOT_TOKENIZER = "tokenizer.json"
SNAPSHOT_SOURCE = "source.json"


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

    @classmethod
    def load(
        cls,
        model: str,
        revision: str | None = None,
        max_length: int | None = None,
        positive_index: int | None = None,
        labels: Sequence[str] | None = None,
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
                             config.id2label, model_limit, wanted, config)

    @classmethod
    def _assemble(
        cls, model: str, requested: str | None, revision: str, commit: str | None, encoder: TextEncoder,
        id2label: dict[Any, str], model_limit: int, wanted: tuple[int | None, int | None, Sequence[str] | None],
        config: Any = None,
    ) -> ModelSource:
        """The source with the operator's settings applied: ``wanted`` = (max_length, positive_index, labels)."""
        max_length, positive_index, labels = wanted
        encoder.max_length = min(max_length or model_limit, model_limit)
        classes = {int(k): v for k, v in id2label.items()}
        return cls(model, requested, revision, encoder, resolve_labels(classes, positive_index, labels), classes,
                   model_limit, commit, config)

    def save_snapshot(self, directory: Path) -> None:
        """The fast tokenizer's own JSON and what the labels and limits came from (needs a fast tokenizer)."""
        self.encoder.tokenizer.backend_tokenizer.save(str(directory / SNAPSHOT_TOKENIZER))
        (directory / SNAPSHOT_SOURCE).write_text(json.dumps({
            "revision": self.revision, "commit": self.commit, "id2label": self.id2label,
            "model_limit": self.model_limit, "pad_id": self.encoder.pad_id,
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
    ) -> ModelSource:
        from tokenizers import Tokenizer

        saved = json.loads((directory / SNAPSHOT_SOURCE).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(directory / SNAPSHOT_TOKENIZER))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        limit = saved["model_limit"]
        return cls._assemble(model, revision, saved["revision"], saved["commit"], TextEncoder(tokenizer, limit, saved["pad_id"]),
                             saved["id2label"], limit, (max_length, positive_index, labels))

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


class HFClassifier:
    """The torch engine (the reference): a transformers model and the shared tokenizer side. Build it with :meth:`load`."""

    def __init__(
        self,
        encoder: TextEncoder,
        model: Any,
        labels: list[str],
        info: dict[str, str],
        compile_mode: str = "auto",
    ) -> None:
        self.encoder = encoder
        self.model = model
        self.labels = labels
        self.info = info
        self._device = next(model.parameters()).device
        self._forward = model  # replaced by a torch.compile'd module in warm_up() where that pays off
        self.compile_mode = compile_mode  # auto: where should_compile() says it pays; on; off

    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

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
        compile: str = "auto",
        source: ModelSource | None = None,
    ) -> HFClassifier:
        import torch

        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        if resolved_device == "cpu":
            torch.set_num_threads(threads or usable_cpus())
        started = time.perf_counter()
        source = source or ModelSource.load(model, revision, max_length, positive_index, labels)
        network = source.load_torch(resolved_device, resolved_dtype)
        info = {
            "model": source.model,
            "revision": source.revision,
            "device": resolved_device,
            "dtype": resolved_dtype,
            "engine": "torch",
            "precision": resolved_dtype,
        }
        classifier = cls(source.encoder, network, source.labels, info, compile)
        log.info(
            "model loaded",
            extra={"fields": {**info, "labels": classifier.labels, "max_length": classifier.max_length,
                              "load_s": round(time.perf_counter() - started, 2)}},
        )
        return classifier

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self.encoder.encode(texts)

    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        import torch

        input_ids, attention = self.encoder.pad(batch)  # numpy, shared with torch without a copy
        with torch.inference_mode():
            logits = self._forward(
                input_ids=torch.from_numpy(input_ids).to(self._device),
                attention_mask=torch.from_numpy(attention).to(self._device),
            ).logits
            return torch.softmax(logits.float(), dim=-1).cpu().tolist()

    def warm_up(self) -> None:
        """Compile where it pays off, then run a few shapes once so the first real batch pays for nothing lazy."""
        wanted = self.compile_mode == "on" or (
            self.compile_mode == "auto" and should_compile(self.model, str(self._device), self.info.get("dtype", ""))
        )
        if wanted:
            self._forward = compile_for_cpu(self.model)
        started = time.perf_counter()
        warm_up_shapes(self)
        if self._forward is not self.model:
            self.info["compiled"] = "inductor"
            log.info("model compiled", extra={"fields": {"compile_s": round(time.perf_counter() - started, 1)}})


def warm_up_shapes(classifier: Classifier) -> None:
    """One row and several rows, short and long, once each: lazy initialisation happens here, not in the first batch.

    With torch.compile's dynamic shapes these are also the specialisations it makes (a size of 1 is its own case).
    """
    for text, rows in (("워밍업", 1), ("워밍업", 8), ("워밍업 " * 40, 1), ("워밍업 " * 40, 8)):
        classify_encoded(classifier, classifier.encode([text] * rows), 4096)


# torch.compile (inductor, weights frozen into the graph, dynamic shapes) fuses GELU,
# layer norm and the residual adds into the bf16 matmuls: on a 2-core AMX Xeon it gave
# ~900-1000 texts/s against ~600 eager (benchmarks/README.md). It costs about a minute of
# compilation at start-up (inductor caches on disk afterwards), so it is done only where
# it pays: a full-size model on the CPU in bfloat16, not the tiny test models.
COMPILE_MIN_PARAMETERS = 5_000_000


def should_compile(model: Any, device: str, dtype: str) -> bool:
    if device != "cpu" or dtype != "bfloat16":
        return False
    try:
        import torch._inductor  # noqa: F401
    except Exception:  # noqa: BLE001 - no inductor, no compile
        return False
    return sum(p.numel() for p in model.parameters()) >= COMPILE_MIN_PARAMETERS


def compile_for_cpu(model: Any) -> Any:
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # constant-fold and pre-pack the weights (inference only)
    return torch.compile(model, dynamic=True)
