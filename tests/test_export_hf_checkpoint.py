"""The Hugging Face checkpoint `export build` saves beside the repository, and the benchmark baseline that loads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import BertConfig, BertModel

from bench.baselines import BASELINE_CHECKPOINT_ENV, baseline_app, trained_checkpoint
from export.hf_checkpoint import checkpoint_dir, is_mean_pool_checkpoint, load_text_checkpoint, save_text_checkpoint
from export.models import MeanPoolClassifier
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from taskspec import MODEL_FILE, SENTIMENT, TOKENIZER_FILE
from tests.support.tiny_models import default_tokenizer_dir

REVIEWS = ["A warm, funny and moving film.", "Dull, long and badly acted; " * 3]


def tiny_mean_pool(seed: int = 0) -> MeanPoolClassifier:
    """The kind of module `export build` trains (encoder, mean pooling, linear head), tiny and random."""
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config._attn_implementation = "eager"  # as export.models.tiny_bert: the mask stays explicit
    module = MeanPoolClassifier(BertModel(config, add_pooling_layer=False), 32, SENTIMENT.num_labels)
    torch.nn.init.normal_(module.classifier.weight, std=1.0)  # decisive logits, unlike a fresh head's near-ties
    return module.eval()


def module_logits(module: MeanPoolClassifier, texts: list[str]) -> np.ndarray:
    assert SENTIMENT.text is not None
    encoder = TextEncoder.from_file(default_tokenizer_dir() / TOKENIZER_FILE, SENTIMENT.text)
    batch = encoder.batch(texts)
    with torch.no_grad():
        logits = module(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    return logits.numpy()


def test_the_saved_checkpoint_is_the_trained_module(tmp_path: Path) -> None:
    module = tiny_mean_pool()
    folder = save_text_checkpoint(module, default_tokenizer_dir(), SENTIMENT.labels, tmp_path / "ckpt")
    assert is_mean_pool_checkpoint(folder) and not is_mean_pool_checkpoint(default_tokenizer_dir())
    loaded = load_text_checkpoint(folder)
    assert loaded.config.id2label == dict(enumerate(SENTIMENT.labels))
    assert SENTIMENT.text is not None
    batch = TextEncoder.from_file(default_tokenizer_dir() / TOKENIZER_FILE, SENTIMENT.text).batch(REVIEWS)
    with torch.no_grad():
        reloaded = loaded(
            input_ids=torch.from_numpy(batch.input_ids), attention_mask=torch.from_numpy(batch.attention_mask)
        ).logits.numpy()
    np.testing.assert_allclose(reloaded, module_logits(module, REVIEWS), atol=1e-6)


def test_the_baseline_finds_the_checkpoint_of_the_served_version_and_runs_its_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "model_repository"
    assert trained_checkpoint(repository, "sentiment") is None
    for version in ("1", "2"):  # published versions (a model file each); only version 2 has a checkpoint
        (repository / "sentiment" / version).mkdir(parents=True)
        (repository / "sentiment" / version / MODEL_FILE).write_bytes(b"onnx")
    module = tiny_mean_pool(seed=1)
    older = checkpoint_dir(repository, "sentiment", "1")
    save_text_checkpoint(module, default_tokenizer_dir(), SENTIMENT.labels, older)
    assert trained_checkpoint(repository, "sentiment") is None  # an older version's checkpoint is not the served one
    saved = save_text_checkpoint(
        module, default_tokenizer_dir(), SENTIMENT.labels, checkpoint_dir(repository, "sentiment", "2")
    )
    assert saved == tmp_path / "checkpoints" / "sentiment" / "2"  # beside the repository, never inside it
    assert trained_checkpoint(repository, "sentiment") == saved

    monkeypatch.setenv(BASELINE_CHECKPOINT_ENV, str(saved))
    with TestClient(baseline_app()) as client:
        response = client.post("/predict", json={"texts": REVIEWS})
    assert response.status_code == 200, response.text
    expected = softmax(module_logits(module, REVIEWS))
    for row, probabilities in zip(response.json()["predictions"], expected, strict=True):
        by_label = {item["label"]: item["score"] for item in row}
        assert [by_label[label] for label in SENTIMENT.labels] == pytest.approx(probabilities.tolist(), abs=1e-5)
