"""Raw-text classifier for direct Triton clients (Python backend, BLS).

Input ``text`` (TYPE_STRING, one UTF-8 string per row); outputs ``label`` (TYPE_STRING) and
``probabilities`` (TYPE_FP32, one per label, in ``labels.txt`` order). Each batch is tokenized
here, padded to the smallest length bucket that holds its longest row, and sent to the
token-level ONNX model named by the ``model_name`` parameter through a BLS request; the logits
come back and are turned into probabilities with a softmax.

The tokenizer and the preprocessing parameters are read from this model's own version folder
(``tokenizer.json``, ``preprocessing.json``), never from the sibling model's folder: with an
``s3://`` repository Triton downloads each model into its own temporary directory.

This file runs inside the Triton Python stub: it may import only numpy and tokenizers (the local
stub environment has both; on the NGC container the deployment image adds ``tokenizers``).
Generated from export/triton_models/raw_text/model.py by export.raw_text - edit that file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def bucket_for(n_tokens: int, buckets: list[int]) -> int:
    """Smallest bucket that holds ``n_tokens`` (the largest one if none does), as in taskspec."""
    for bucket in buckets:
        if n_tokens <= bucket:
            return bucket
    return buckets[-1]


class TritonPythonModel:
    """Tokenize, call the token-level model, return label and probabilities."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        prep_path = os.path.join(folder, "preprocessing.json")
        if not os.path.isfile(prep_path):
            raise pb_utils.TritonModelException(f"{prep_path} is missing: publish the text model first")
        with open(prep_path, encoding="utf-8") as handle:
            prep = json.load(handle)
        text = prep["text"]
        self.buckets: list[int] = [int(b) for b in text["buckets"]]
        self.labels: list[str] = list(prep["labels"])
        self.input_names: list[str] = list(prep["inputs"])
        tokenizer_path = os.path.join(folder, text["tokenizer_file"])
        if not os.path.isfile(tokenizer_path):
            raise pb_utils.TritonModelException(f"{tokenizer_path} is missing: publish the text model first")
        self.tokenizer = Tokenizer.from_file(tokenizer_path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(text["max_length"]))
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        params = config.get("parameters", {})
        self.target = str(params.get("model_name", {}).get("string_value", ""))
        if not self.target:
            raise pb_utils.TritonModelException("parameter model_name (the token-level model) is not set")
        self.target_version = int(params.get("model_version", {}).get("string_value", "-1") or -1)

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        length = bucket_for(max(len(e.ids) for e in encodings), self.buckets)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = min(len(encoding.ids), length)
            ids[row, :n] = encoding.ids[:n]
            mask[row, :n] = 1
        return ids, mask

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        tensors = {"input_ids": ids, "attention_mask": mask}
        request = pb_utils.InferenceRequest(
            model_name=self.target,
            model_version=self.target_version,
            requested_output_names=["logits"],
            inputs=[pb_utils.Tensor(name, tensors[name]) for name in self.input_names],
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.target}: {response.error().message()}")
        logits: np.ndarray = pb_utils.get_output_tensor_by_name(response, "logits").as_numpy()
        return logits.astype(np.float32)

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        rows: list[int] = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy().reshape(-1)
            for value in values:
                texts.append(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value))
            rows.append(len(values))
        try:
            # One BLS call for everything Triton batched together: the token-level model sees
            # one padded batch instead of one request per row.
            probabilities = softmax(self._logits(*self._tokenize(texts)))
        except Exception as exc:  # every request of the batch gets the same error
            error = pb_utils.TritonError(f"{self.target}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        labels = np.array([self.labels[i].encode("utf-8") for i in probabilities.argmax(axis=1)], dtype=np.object_)
        responses = []
        start = 0
        for n in rows:
            stop = start + n
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(LABEL_OUTPUT, labels[start:stop].reshape(n, 1)),
                        pb_utils.Tensor(PROBABILITIES_OUTPUT, probabilities[start:stop].astype(np.float32)),
                    ]
                )
            )
            start = stop
        return responses
