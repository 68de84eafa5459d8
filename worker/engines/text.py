"""The tokenizer side every engine shares: texts to ids cut to the model's limit, and ids to padded numpy batches."""

from __future__ import annotations

from typing import Any, Sequence

from worker.engines.base import Encoding


# Characters of a text kept per token of the model's limit before tokenizing (512 tokens: 16,384 characters).
# A Korean review averages under 2 characters per token, English about 4; only a text made of words
# over 100 characters (each one [UNK]) could reach its 512th token later, and is then cut shorter.
CHARS_PER_TOKEN = 32


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
        # Tokenize untruncated once, then cut by hand: one pass tells both the ids and whether the
        # text was too long. Only after cutting the text itself to CHARS_PER_TOKEN characters per
        # token the model can take: tokenizing a whole 1 MB review yields ~300,000 tokens and tens of
        # MB of the tokenizer's structures, and a poll of 70 of them took the worker's RSS to 2.7 GB.
        # Natural text needs far fewer characters per token, so the ids the model sees are the same.
        chars = self.max_length * CHARS_PER_TOKEN
        cut = [len(text) > chars for text in texts]
        texts = [text[:chars] if too_long else text for text, too_long in zip(texts, cut)]
        if self._backend:
            encoded = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]
        else:
            encoded = self.tokenizer(
                texts,
                add_special_tokens=True,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
        limit = self.max_length
        return [
            Encoding(ids[: limit - 1] + ids[-1:], True) if len(ids) > limit else Encoding(ids, too_long)
            for ids, too_long in zip(encoded, cut)
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
