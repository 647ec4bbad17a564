"""Logits -> probabilities, as every consumer of the models computes them."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise (last axis) softmax in float64, stable for large logits; returns float64."""
    values = np.asarray(logits, dtype=np.float64)
    exp = np.exp(values - values.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]
