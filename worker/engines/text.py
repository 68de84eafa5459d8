"""The tokenizer side every engine shares: texts to ids cut to the model's limit, and ids to padded numpy batches."""

from __future__ import annotations

from typing import Any, Sequence

from worker.engines.base import Encoding


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
