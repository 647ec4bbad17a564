"""Tokenization with batching-aware padding.

Triton's dynamic batcher only merges requests whose tensors have the same shape. Padding every
text to the model's maximum length batches perfectly but wastes compute on padding; padding to
each request's own length computes little but rarely batches. The middle way: a few length
buckets per task (``preprocessing.json``); each text is padded to the smallest bucket that holds
it, truncated at the largest, and the texts of one request are split into one group per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from frontend_api.settings import TextPadding
from taskspec import TextPreprocessing


@dataclass(frozen=True)
class TokenGroup:
    """Texts of one request that share a padded length: one Triton request."""

    indices: tuple[int, ...]
    """Positions of these texts in the request."""
    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def padded_length(n_tokens: int, preprocessing: TextPreprocessing, padding: TextPadding) -> int:
    """Length a text of ``n_tokens`` (already truncated) is padded to."""
    if padding == "max_length":
        return preprocessing.max_length
    return preprocessing.bucket_for(n_tokens)


def encode(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    preprocessing: TextPreprocessing,
    *,
    pad_id: int = 0,
    padding: TextPadding = "buckets",
) -> list[TokenGroup]:
    """Tokenize ``texts`` and group them by padded length (shortest bucket first).

    ``tokenizer`` must truncate at ``preprocessing.max_length`` (see :mod:`frontend_api.artifacts`);
    special tokens ([CLS], [SEP]) are added by its post-processor and count toward the length.
    """
    encodings = tokenizer.encode_batch_fast(list(texts))
    by_length: dict[int, list[int]] = {}
    for index, encoding in enumerate(encodings):
        length = padded_length(len(encoding.ids), preprocessing, padding)
        by_length.setdefault(length, []).append(index)
    groups = []
    for length in sorted(by_length):
        indices = by_length[length]
        input_ids = np.full((len(indices), length), pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(indices), length), dtype=np.int64)
        for row, index in enumerate(indices):
            ids = encodings[index].ids[:length]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        groups.append(TokenGroup(tuple(indices), input_ids, attention_mask))
    return groups


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits), returned as float64."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]
