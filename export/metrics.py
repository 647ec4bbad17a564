"""Classification metrics (numpy only) and the model card written next to each published version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from preprocess.probabilities import softmax
from taskspec import TOP_PROBABILITY_BUCKETS


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


def confidence_distribution(logits: np.ndarray) -> dict[str, Any]:
    """How sure the model is on held-out rows: the share of the rows whose top-class probability (softmax, as the
    facade computes it) falls in each bucket of :data:`taskspec.TOP_PROBABILITY_BUCKETS` (``le``: upper bounds,
    a bucket holds the values above the previous bound up to its own, as in a Prometheus histogram).

    The reference the dashboard sets the facade's ``mtc_api_top_probability`` histogram against
    (``metrics.json``'s ``validation_confidence``).
    """
    bounds = np.asarray(TOP_PROBABILITY_BUCKETS, dtype=np.float64)
    rows = len(logits)
    top = softmax(logits).max(axis=1) if rows else np.zeros(0)
    bucket = np.minimum(np.searchsorted(bounds, top, side="left"), len(bounds) - 1)
    counts = np.bincount(bucket, minlength=len(bounds))
    return {
        "n": rows,
        "le": [float(b) for b in bounds],
        "shares": [round(float(c) / rows, 4) if rows else 0.0 for c in counts],
    }


def _confidence_text(confidence: Mapping[str, Any]) -> str:
    """``(0.9, 0.95] 12.0%, (0.95, 0.99] 30.5%, ...``: the non-empty buckets of a :func:`confidence_distribution`."""
    parts, lower = [], 0.0
    for bound, share in zip(confidence["le"], confidence["shares"], strict=True):
        if share > 0:
            parts.append(f"({lower:g}, {bound:g}] {share:.1%}")
        lower = bound
    return ", ".join(parts) or "-"


def _confusion_table(confusion: list[list[int]], names: Sequence[str]) -> str:
    header = "| true \\ predicted | " + " | ".join(names) + " |"
    rule = "| --- |" + " --- |" * len(names)
    rows = [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(names, confusion, strict=True)]
    return "\n".join([header, rule, *rows])


def _validation_table(validation: Mapping[str, Any]) -> list[str]:
    """The card's table of every model file's held-out validation against its floor."""
    files = validation.get("files") or {}
    lines = [
        "## Validation before publishing",
        "",
        f"Every model file of this version ran on the {validation.get('held_out_rows', '?')} held-out rows before "
        "it was published; a file below its floor would have stopped the whole version.",
        "",
        "| file | served by | top-1 agreement with reference (rows) | max \\|logit diff\\| | held-out accuracy | "
        "floor | passed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, record in files.items():
        floor, config = record["floor"], record.get("config")
        parts = [f"agreement >= {floor['min_agreement']:.0%}"]
        if floor.get("max_abs_diff") is not None:
            parts.append(f"diff <= {floor['max_abs_diff']:g}")
        if floor.get("max_accuracy_drop") is not None:
            parts.append(f"accuracy >= model.onnx - {floor['max_accuracy_drop'] * 100:.1f} points")
        lines.append(
            f"| `{name}` | {f'`{config}`' if config else 'not served'} | "
            f"{record['agreement']:.2%} vs {record['reference']} ({record['sample_rows']}) | "
            f"{record['max_abs_diff']:.2e} | {record['accuracy']:.2%} | {', '.join(parts)} | "
            f"{'yes' if record['passed'] else 'NO'} |"
        )
    lines.append("")
    for name, record in files.items():
        lines.append(f"- `{name}` floor: {record['floor']['reason']}.")
    return [*lines, ""]


def model_card(title: str, names: Sequence[str], metrics: Mapping[str, Any]) -> str:
    """A short markdown card: data, recipe, held-out accuracy / F1, validation of every model file, confusion matrix.

    Only what ``metrics`` holds is shown (a test model has no data, recipe or training figures).
    """
    test = metrics["test"]
    lines = [f"# {title} ({metrics['task']}, profile {metrics.get('profile', '-')})", ""]
    for key, label in (("data", "Data"), ("checkpoint", "Base model"), ("recipe_summary", "Recipe"), ("note", "Note")):
        if key in metrics:
            lines.append(f"- **{label}**: {metrics[key]}")
    if "device" in metrics:
        lines.append(
            f"- **Device**: {metrics['device']}"
            + (f" ({metrics['precision']})" if "precision" in metrics else "")
            + f"; training took {metrics['train_seconds']:.0f} s; seed {metrics['seed']}"
        )
    if "derived_from_version" in metrics:
        lines.append(f"- **Derived from version** {metrics['derived_from_version']} (its files plus the new ones)")
    lines += [
        "",
        "## Held-out test (never used for training or tuning)",
        "",
        f"- accuracy **{test['accuracy']:.2%}** on {test['n']} examples",
        f"- macro F1 {test['macro_f1']:.3f}" + (f", F1 of `{names[1]}` {test['f1']:.3f}" if "f1" in test else ""),
    ]
    if "validation_confidence" in metrics:
        lines.append(
            "- top-class probability (share of the predictions per bucket; the dashboard's drift reference): "
            + _confidence_text(metrics["validation_confidence"])
        )
    if "val" in metrics:
        lines.append(f"- validation (split from the training data): accuracy {metrics['val']['accuracy']:.2%}")
    if "train" in metrics:
        lines.append(f"- training accuracy {metrics['train']['accuracy']:.2%}")
    if "int8" in metrics:
        q = metrics["int8"]
        lines.append(
            f"- int8 (dynamic quantisation, `{q['file']}`, {q['size_mb']:.1f} MB): accuracy {q['test']['accuracy']:.2%}"
        )
    if isinstance(metrics.get("teacher"), Mapping) and "test" in metrics["teacher"]:
        teacher = metrics["teacher"]
        lines.append(
            f"- teacher ({teacher['task']} version {teacher['version']}) on the same split: accuracy "
            f"{teacher['test']['accuracy']:.2%}"
        )
    if isinstance(metrics.get("latency"), Mapping):
        latency = metrics["latency"]
        figures = ", ".join(
            f"`{name}` p50 {row['p50_ms']:.1f} ms (p90 {row['p90_ms']:.1f})"
            for name, row in latency["files"].items()
            if row.get("p50_ms") is not None
        )
        lines.append(
            f"- latency of one request ({latency['intra_op_threads']} thread, model only, "
            f"load average {latency['load_average_1m']:g} on {latency['cpu_count']} CPUs): {figures}"
        )
    lines += ["", "Confusion matrix (test):", "", _confusion_table(test["confusion_matrix"], names), ""]
    if "validation" in metrics:
        lines += _validation_table(metrics["validation"])
    return "\n".join(lines)
