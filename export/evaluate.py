"""Evaluate an exported ONNX model on held-out data exactly as it will be served.

Text is tokenized with the published ``tokenizer.json``, truncated to the spec's maximum length and
padded to the spec's length buckets (what the facade and the raw-text model do); images are
resized to the spec's size and scaled with its mean/std. The numbers in the model card are those
of the ONNX file that is published, not of the PyTorch module it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from export.data import ImageSplit, TextSplit, decode_image
from export.features import normalize
from export.train import encode_texts, pad_batch
from taskspec import TaskSpec


def _session(onnx_path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def text_logits(
    onnx_path: Path,
    tokenizer_file: Path,
    spec: TaskSpec,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Logits of ``texts`` through ``onnx_path``, tokenized and bucketed like the facade."""
    assert spec.text is not None
    encoded = encode_texts(tokenizer_file, texts, spec.text.max_length)
    session = _session(onnx_path)
    logits = np.zeros((len(texts), spec.num_labels), dtype=np.float32)
    by_bucket: dict[int, list[int]] = {}
    for i, row in enumerate(encoded):
        by_bucket.setdefault(spec.text.bucket_for(len(row)), []).append(i)
    batches = [
        (bucket, rows[start : start + batch_size])
        for bucket, rows in sorted(by_bucket.items())
        for start in range(0, len(rows), batch_size)
    ]
    for bucket, rows in tqdm(batches, desc=f"evaluate {spec.name}", unit="batch", disable=not progress):
        ids, mask = pad_batch([encoded[i] for i in rows], bucket)
        (out,) = session.run([spec.output.name], {"input_ids": ids, "attention_mask": mask})
        logits[rows] = out
    return logits


def image_logits(
    onnx_path: Path, spec: TaskSpec, paths: Sequence[Path], *, batch_size: int = 16, progress: bool = True
) -> np.ndarray:
    """Logits of the images at ``paths`` through ``onnx_path``, preprocessed like the facade."""
    assert spec.image is not None
    session = _session(onnx_path)
    chunks = []
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc=f"evaluate {spec.name}", unit="batch", disable=not progress):
        pixels = np.stack([decode_image(p, spec.image.size) for p in paths[start : start + batch_size]])
        (out,) = session.run([spec.output.name], {spec.inputs[0].name: normalize(pixels, spec.image)})
        chunks.append(out)
    return np.concatenate(chunks) if chunks else np.zeros((0, spec.num_labels), np.float32)


def split_logits(
    onnx_path: Path, spec: TaskSpec, split: TextSplit | ImageSplit, *, tokenizer_file: Path | None, progress: bool
) -> np.ndarray:
    if isinstance(split, TextSplit):
        assert tokenizer_file is not None
        return text_logits(onnx_path, tokenizer_file, spec, split.texts, progress=progress)
    return image_logits(onnx_path, spec, split.paths, progress=progress)


def quantize_int8(onnx_path: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of the MatMul/Gemm weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return target
