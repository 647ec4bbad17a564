"""Frozen-backbone image features, computed with ONNX Runtime and cached on disk.

Training the pose head on frozen EfficientNet-Lite0 features needs every training image through
the backbone once (twice with horizontal flips). ONNX Runtime runs that about 8x faster than eager
PyTorch on a small CPU, so the backbone is exported once and the features are computed with it.
Images go through :mod:`preprocess.image` (decode, EXIF orientation, RGB, resize, normalise), as
served. Features are cached under ``.cache/features/`` keyed by the backbone weights, the image list,
the preprocessing parameters and the source of :mod:`preprocess.image` (a change to how images are
preprocessed recomputes them), so a rebuild with the same data skips the work.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

import preprocess.image
from export.data import PROJECT_ROOT
from preprocess.image import normalize, read_resized
from taskspec import ImagePreprocessing

DEFAULT_CACHE = PROJECT_ROOT / ".cache" / "features"


def backbone_session(backbone: torch.nn.Module, size: int, workdir: Path) -> ort.InferenceSession:
    """Export ``backbone`` to ONNX in ``workdir`` and open it with ONNX Runtime."""
    path = workdir / "backbone.onnx"
    with torch.no_grad():
        torch.onnx.export(
            backbone.eval().cpu(),
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["pixel_values"],
            output_names=["features"],
            dynamic_axes={"pixel_values": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _cache_key(weights_id: str, paths: Sequence[Path], image: ImagePreprocessing, flip: bool) -> str:
    digest = hashlib.sha256()
    digest.update(f"{weights_id}|{image}|flip={flip}|v1".encode())
    digest.update(Path(preprocess.image.__file__).read_bytes())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def extract_features(
    backbone: torch.nn.Module,
    paths: Sequence[Path],
    image: ImagePreprocessing,
    *,
    weights_id: str,
    flip: bool = False,
    batch_size: int = 32,
    cache_dir: Path | None = DEFAULT_CACHE,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Backbone features (N, D) of the images at ``paths`` (horizontally flipped when ``flip``)."""
    cache = cache_dir / f"{_cache_key(weights_id, paths, image, flip)}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        cached: np.ndarray = np.load(cache)
        return cached
    with tempfile.TemporaryDirectory(prefix="mtc-backbone-") as workdir:
        session = backbone_session(backbone, image.size, Path(workdir))
        chunks: list[np.ndarray] = []
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        # JPEG decoding overlaps with ONNX Runtime (which releases the GIL) in a second thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            decode = lambda chunk: np.stack([read_resized(p, image.size) for p in chunk])  # noqa: E731
            pending = pool.submit(decode, batches[0]) if batches else None
            for index in tqdm(range(len(batches)), desc=desc, unit="batch", disable=not progress):
                assert pending is not None
                pixels = pending.result()
                if index + 1 < len(batches):
                    pending = pool.submit(decode, batches[index + 1])
                if flip:
                    pixels = pixels[:, :, ::-1, :]
                (features,) = session.run(["features"], {"pixel_values": normalize(pixels, image)})
                chunks.append(features.astype(np.float32))
    result = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.stem}.{os.getpid()}.partial.npy")
        np.save(partial, result)
        partial.replace(cache)
    return result
