"""The shared half of the engines that run an exported model on padded numpy batches (ONNX Runtime, OpenVINO)."""

from __future__ import annotations

from typing import Any, Sequence

from worker.engines.base import Encoding, activate, warm_up_shapes
from worker.engines.source import ModelSource


class ExportedClassifier:
    """A classifier whose model runs outside torch on padded int64 numpy batches; subclasses supply :meth:`_logits`."""

    def __init__(self, source: ModelSource, info: dict[str, str]) -> None:
        self.encoder = source.encoder
        self.labels = list(source.labels)
        self.multi_label = source.multi_label
        # worker_model_info says so for a multi-label model; a single-label model's info is as it was.
        self.info = {**info, "problem_type": source.problem_type} if source.multi_label else info

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self.encoder.encode(texts)

    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        input_ids, attention = self.encoder.pad(batch)
        # The export ends at the logits (one graph for either kind of model); the activation is applied here.
        return activate(self._logits(input_ids, attention), self.multi_label)

    def _logits(self, input_ids: Any, attention_mask: Any) -> Any:
        raise NotImplementedError

    def warm_up(self) -> None:
        warm_up_shapes(self)
