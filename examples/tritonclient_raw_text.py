"""Classify raw text with nothing but ``tritonclient``: no tokenizer, no facade.

The ``<task>_text`` models in the Triton repository take UTF-8 strings (``TYPE_STRING`` input
``text``) and return the predicted ``label`` and the ``probabilities`` of every label. Start a
server (``make run``, or ``python -m serving.triton``) and run::

    python examples/tritonclient_raw_text.py --task sentiment "What a wonderful film" "Dull and far too long"
    python examples/tritonclient_raw_text.py --task disaster --url localhost:8000 "Forest fire near La Ronge"
    python examples/tritonclient_raw_text.py --protocol grpc "Great acting"

``--url`` defaults to Triton's port for the chosen protocol: 8000 (HTTP/REST) or 8001 (gRPC).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
"""Triton's default ports: HTTP/REST and gRPC are separate servers."""


def classify(url: str, task: str, texts: list[str], protocol: str = "http") -> list[tuple[str, dict[str, float]]]:
    """(label, {label: probability}) for each text, from the ``<task>_text`` model."""
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc  # type: ignore[no-redef]

    client = tc.InferenceServerClient(url)
    model = f"{task}_text"
    kwargs = {"as_json": True} if protocol == "grpc" else {}
    metadata = client.get_model_metadata(model, **kwargs)
    outputs = {o["name"]: o for o in metadata["outputs"]}
    num_labels = int(outputs["probabilities"]["shape"][-1])

    batch = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)  # shape (rows, 1)
    text_input = tc.InferInput("text", list(batch.shape), "BYTES")
    text_input.set_data_from_numpy(batch)
    requested = [
        tc.InferRequestedOutput("label"),
        # Triton's classification extension: "probability:index:label" for every label, named from labels.txt.
        tc.InferRequestedOutput("probabilities", class_count=num_labels),
    ]
    result = client.infer(model, [text_input], outputs=requested)
    labels = [value.decode("utf-8") for value in result.as_numpy("label").reshape(-1)]
    answers = []
    for label, row in zip(labels, result.as_numpy("probabilities").reshape(len(texts), num_labels), strict=True):
        probabilities = {}
        for entry in row:
            score, _, name = entry.decode("utf-8").split(":", 2)
            probabilities[name] = float(score)
        answers.append((label, probabilities))
    return answers


def main() -> int:
    parser = argparse.ArgumentParser(description="Classify raw text through Triton's <task>_text model.")
    parser.add_argument("texts", nargs="+", help="texts to classify")
    parser.add_argument("--task", default="sentiment", choices=("sentiment", "disaster"))
    parser.add_argument(
        "--url", default=None, help="Triton address (default: localhost:8000 for http, localhost:8001 for grpc)"
    )
    parser.add_argument("--protocol", choices=tuple(DEFAULT_URLS), default="http")
    args = parser.parse_args()
    url = args.url or DEFAULT_URLS[args.protocol]
    try:
        results = classify(url, args.task, args.texts, args.protocol)
    except Exception as exc:  # connection refused, model not ready: one readable line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for text, (label, probabilities) in zip(args.texts, results, strict=True):
        shown = ", ".join(f"{name}={p:.3f}" for name, p in probabilities.items())
        print(f"{label:>14}  [{shown}]  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
