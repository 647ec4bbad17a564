"""Classification metrics (numpy only) and the model card written next to each published version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, macro F1 and the confusion matrix (rows: true label)."""
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for i, name in enumerate(names):
        tp = float(confusion[i, i])
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i, :].sum() if confusion[i, :].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}
        f1s.append(f1)
    result: dict[str, Any] = {
        "n": len(labels),
        "accuracy": round(float(np.mean(labels == predictions)), 4) if len(labels) else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
    if k == 2:
        result["f1"] = per_class[names[1]]["f1"]  # F1 of the positive class (positive / disaster)
    return result


def _confusion_table(confusion: list[list[int]], names: Sequence[str]) -> str:
    header = "| true \\ predicted | " + " | ".join(names) + " |"
    rule = "| --- |" + " --- |" * len(names)
    rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(names, confusion, strict=True)]
    return "\n".join([header, rule, *rows])


def model_card(title: str, names: Sequence[str], metrics: Mapping[str, Any]) -> str:
    """A short markdown card: data, recipe, held-out accuracy / F1, confusion matrix, export check."""
    test = metrics["test"]
    lines = [
        f"# {title} ({metrics['task']}, profile {metrics['profile']})",
        "",
        f"- **Data**: {metrics['data']}",
        f"- **Base model**: {metrics['checkpoint']}",
        f"- **Recipe**: {metrics['recipe_summary']}",
        f"- **Device**: {metrics['device']}; training took {metrics['train_seconds']:.0f} s; seed {metrics['seed']}",
        "",
        "## Held-out test (never used for training or tuning)",
        "",
        f"- accuracy **{test['accuracy']:.2%}** on {test['n']} examples",
        f"- macro F1 {test['macro_f1']:.3f}" + (f", F1 of `{names[1]}` {test['f1']:.3f}" if "f1" in test else ""),
    ]
    if "val" in metrics:
        lines.append(f"- validation (split from the training data): accuracy {metrics['val']['accuracy']:.2%}")
    if "train" in metrics:
        lines.append(f"- training accuracy {metrics['train']['accuracy']:.2%}")
    if "int8" in metrics:
        q = metrics["int8"]
        lines.append(
            f"- int8 (dynamic quantisation, `{q['file']}`, {q['size_mb']:.1f} MB): accuracy {q['test']['accuracy']:.2%}"
        )
    lines += ["", "Confusion matrix (test):", "", _confusion_table(test["confusion_matrix"], names), ""]
    export = metrics.get("export")
    if export:
        lines += [
            "## Export check",
            "",
            f"ONNX opset {export['opset']}; max |logit difference| vs PyTorch {export['max_abs_diff']:.2e} "
            f"(tolerance {export['atol']:g}), same label on {export['argmax_agreement']:.0%} of "
            f"{export['batch_size']} rows.",
            "",
        ]
    return "\n".join(lines)
