"""Text -> ``input_ids`` / ``attention_mask``: the one tokenization every path shares.

A :class:`TextEncoder` is the published ``tokenizer.json`` set up as the task's
:class:`~taskspec.TextPreprocessing` declares:

- the tokenizer's own truncation and padding are switched off (the published file has them off too);
  a text is tokenized whole, and one longer than ``max_length`` tokens is cut per ``truncation``
  (:meth:`TextEncoder.encode`): ``head`` keeps the first content tokens (what the tokenizer's own
  right truncation keeps), ``head+tail`` the first and the last ones (``head_fraction`` of the
  budget from the start); the special tokens the tokenizer's post-processor adds (``[CLS]``,
  ``[SEP]``) always open and close the row. Each :class:`EncodedText` says how many tokens the
  whole text had, so a caller can be told that its text was truncated;
- with ``lowercase``, a ``Lowercase`` normalizer runs before the tokenizer's own normalizer;
- rows are right-padded with the tokenizer's pad token id (``[PAD]`` or ``<pad>``; a tokenizer with
  neither is refused, never padded with a guessed 0), and the attention mask marks the real tokens.

Triton's dynamic batcher only merges requests whose tensors have the same shape. Padding every
text to the model's maximum length batches perfectly but wastes compute on padding; padding to
each request's own length computes little but rarely batches. The middle way: a few length
buckets per task; each text is padded to the smallest bucket that holds it.
:meth:`TextEncoder.groups` splits texts into one batch per bucket (the facade, the evaluation),
:meth:`TextEncoder.batch` pads a whole batch to the bucket of its longest row (the raw-text model,
the benchmarks). Padding never changes a model's logits (the mask hides it); it only decides
which requests Triton can batch together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Encoding, Tokenizer, normalizers

from preprocess.errors import InvalidArtifacts
from taskspec import PREPROCESSING_FILE, TOKENIZER_FILE, TextPreprocessing

Padding = Literal["buckets", "max_length"]
"""``buckets``: the smallest length bucket that holds the text; ``max_length``: always the largest."""
PAD_TOKENS = ("[PAD]", "<pad>")


@dataclass(frozen=True)
class EncodedText:
    """One text's token ids as the model reads them, and how long the whole text was."""

    ids: list[int]
    """Ids with the special tokens ([CLS] ... [SEP]), truncated per the strategy, unpadded."""
    text_tokens: int
    """Tokens of the whole text (special tokens included) before truncation."""

    @property
    def truncated(self) -> bool:
        """Some tokens of the text were cut (the model did not read all of it)."""
        return self.text_tokens > len(self.ids)


@dataclass(frozen=True)
class TokenBatch:
    """Texts padded to one length: the tensors of one model call."""

    input_ids: np.ndarray
    """int64 (rows, length), right-padded with the tokenizer's pad id."""
    attention_mask: np.ndarray
    """int64 (rows, length): 1 on real tokens, 0 on padding."""
    indices: tuple[int, ...] = ()
    """Positions of these rows among the texts given to :meth:`TextEncoder.groups` (else empty)."""

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def chunks(self, rows: int) -> list[TokenBatch]:
        """This batch cut into batches of at most ``rows`` rows (same length)."""
        return [
            TokenBatch(self.input_ids[i : i + rows], self.attention_mask[i : i + rows], self.indices[i : i + rows])
            for i in range(0, len(self.input_ids), rows)
        ]

    def inputs(self, names: Sequence[str] = ("input_ids", "attention_mask")) -> dict[str, np.ndarray]:
        """The tensors by input name (the task spec's ``input_names``: ids first, then mask)."""
        ids_name, mask_name = names
        return {ids_name: self.input_ids, mask_name: self.attention_mask}


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id of the tokenizer's pad token; :class:`InvalidArtifacts` when it has none."""
    for token in PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise InvalidArtifacts(f"the tokenizer has no pad token ({' or '.join(PAD_TOKENS)}): its pad id is unknown")


class TextEncoder:
    """The published tokenizer set up per the task's :class:`~taskspec.TextPreprocessing` (thread-safe)."""

    def __init__(self, tokenizer_json: str, preprocessing: TextPreprocessing) -> None:
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # `tokenizers` raises plain Exception for a file it rejects
            raise InvalidArtifacts(f"the tokenizer cannot be loaded: {exc}") from exc
        tokenizer.no_padding()
        tokenizer.no_truncation()  # the whole text is tokenized; encode() cuts it per the declared strategy
        if preprocessing.lowercase:
            own = tokenizer.normalizer
            lowercase = normalizers.Lowercase()
            tokenizer.normalizer = lowercase if own is None else normalizers.Sequence([lowercase, own])
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.pad_id = pad_token_id(tokenizer)

    @classmethod
    def from_file(cls, path: Path | str, preprocessing: TextPreprocessing) -> TextEncoder:
        """From a ``tokenizer.json`` file."""
        return cls(Path(path).read_text(encoding="utf-8"), preprocessing)

    @classmethod
    def from_version_dir(cls, folder: Path | str) -> TextEncoder:
        """From a published version folder: its ``preprocessing.json`` and ``tokenizer.json``."""
        folder = Path(folder)
        try:
            document = json.loads((folder / PREPROCESSING_FILE).read_text(encoding="utf-8"))
            preprocessing = TextPreprocessing.from_document(document["text"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArtifacts(f"{folder / PREPROCESSING_FILE} is unusable: {exc!r}") from exc
        return cls.from_file(folder / TOKENIZER_FILE, preprocessing)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Each text tokenized whole, then cut to ``max_length`` per the declared ``truncation``."""
        return [self._cut(encoding) for encoding in self.tokenizer.encode_batch(list(texts))]

    def _cut(self, encoding: Encoding) -> EncodedText:
        ids: list[int] = encoding.ids
        max_length = self.preprocessing.max_length
        if len(ids) <= max_length:
            return EncodedText(ids, len(ids))
        # The special tokens the post-processor added lead and close the row: they stay, the content is cut.
        special = encoding.special_tokens_mask
        lead = next((i for i, flag in enumerate(special) if not flag), len(ids))
        trail = next((i for i, flag in enumerate(reversed(special)) if not flag), 0)
        budget = max(max_length - lead - trail, 0)
        head, tail = self.preprocessing.head_tail(budget)
        content_end = len(ids) - trail
        kept = ids[: lead + head] + ids[content_end - tail : content_end] + ids[content_end:]
        return EncodedText(kept, len(ids))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids with the special tokens ([CLS] ... [SEP]), truncated, unpadded."""
        return [encoded.ids for encoded in self.encode(texts)]

    def n_tokens(self, text: str) -> int:
        """How many tokens ``text`` becomes (after truncation)."""
        return len(self.encode([text])[0].ids)

    def padded_length(self, n_tokens: int, padding: Padding = "buckets") -> int:
        """The length a row of ``n_tokens`` is padded to."""
        if padding == "max_length":
            return self.preprocessing.max_length
        return self.preprocessing.bucket_for(n_tokens)

    def pad(
        self, rows: Sequence[Sequence[int]], length: int | None = None, indices: tuple[int, ...] = ()
    ) -> TokenBatch:
        """Right-pad ``rows`` to ``length`` (the longest row's length by default) with the pad id."""
        length = length or max(len(row) for row in rows)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            if len(row) > length:
                raise ValueError(f"a row of {len(row)} tokens does not fit length {length}: truncate first")
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return TokenBatch(input_ids, attention_mask, indices)

    def batch(self, texts: Sequence[str], padding: Padding = "buckets") -> TokenBatch:
        """Every text in one shape: padded to the bucket of the longest (or to the maximum length)."""
        rows = self.token_ids(texts)
        return self.pad(rows, self.padded_length(max(len(row) for row in rows), padding))

    def groups(self, texts: Sequence[str], padding: Padding = "buckets") -> list[TokenBatch]:
        """One batch per padded length (shortest first), each text padded to its own bucket."""
        return self.group_rows([encoded.ids for encoded in self.encode(texts)], padding)

    def group_rows(self, rows: Sequence[Sequence[int]], padding: Padding = "buckets") -> list[TokenBatch]:
        """:meth:`groups` of texts already encoded (:meth:`encode`)."""
        by_length: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            by_length.setdefault(self.padded_length(len(row), padding), []).append(index)
        return [self.pad([rows[i] for i in group], length, tuple(group)) for length, group in sorted(by_length.items())]
