"""Train/serve parity: every path turns the same raw reviews, tweets and photos into the same tensors.

The same raw inputs (``tests/preprocess_inputs.py``: real IMDB reviews and tweets from the shared datasets
when present, edge-case texts, scikit-image photos in JPEG/PNG/WebP/GIF, grey, RGBA and palette modes,
odd sizes and EXIF orientations 3, 6 and 8, HAR photos when present) go through

(a) export's evaluation path (``export.evaluate``: what the model card's accuracy is measured on);
(b) the facade (``frontend_api``: its real app and service, with a fake Triton that records the exact tensors
    it is sent and answers with ONNX Runtime on the published file);
(c) the raw-text Triton models ``<task>_text``, as published, in a real Triton: their BLS requests go to a
    recording Python model standing in for ``<task>`` (ONNX Runtime on the same published ``model.onnx``),
    so the tensors they send are captured inside the server;
(d) the reference: :mod:`preprocess` on the published artifacts (``preprocessing.json``, ``tokenizer.json``)
    and ONNX Runtime directly on the published ``model.onnx``.

Token ids, attention masks and pixel tensors must be identical to (d), bit for bit (each text padded to its
own bucket; for a batch sent whole to a raw-text model, to the bucket of its longest text). Logits (and the
probabilities the facade and the raw-text models answer) must agree within ``LOGIT_ATOL`` = 1e-5: the same
fp32 ONNX file on the same tensors, only the batch composition differs between paths (measured difference on
a 2-core CPU: 0.0 for the evaluation path's logits; the tiny models' logits are about 0.02 for text, 0.3 for
pose).

The models are tiny random ones (``tests.support.tiny_models``) published with a *cased* copy of the MiniLM tokenizer,
so that the declared ``lowercase`` is what lowercases (with the uncased tokenizer a path that skipped it
would send the same ids, and no skew could be seen because there would be none).

This test fails if any one path changes its preprocessing. Checked by hand on 2026-12-01 (not committed), one
change at a time; each failed that path's tests and only them:
(a) ``export.evaluate.text_inputs`` with ``lowercase=False`` (what evaluation did before: the flag was never
    applied); ``export.evaluate.image_inputs`` resizing nearest-neighbour instead of bilinear;
(b) the facade's encoder with pad id 1; with ``lowercase=False``; ``frontend_api.images.decode_batch``
    decoding without the EXIF orientation (what the facade did before);
(c) the raw-text ``model.py`` padding every batch to the maximum length; with pad id 1; its published copy of
    ``preprocess/text.py`` truncating one token earlier.
A change inside :mod:`preprocess` itself moves every path at once (that is the point); ``test_preprocess.py``
pins its behaviour (pad id, lowercase, head truncation, EXIF orientation, normalisation) to checked values.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from tritonclient.grpc import model_config_pb2 as mc

from export.evaluate import image_inputs, image_logits, text_inputs, text_logits
from export.triton_config import render_model_config
from frontend_api.app import create_app
from frontend_api.settings import ApiSettings
from preprocess.image import DEFAULT_MAX_PIXELS, decode_image
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from serving.triton import TritonServer
from taskspec import (
    CONFIG_FILE,
    DISASTER,
    MODEL_FILE,
    POSE,
    PREPROCESSING_FILE,
    SENTIMENT,
    TOKENIZER_FILE,
    ImagePreprocessing,
    TaskSpec,
)
from tests.fakes.frontend_api import FakeTriton, ImageHostTransport
from tests.preprocess_inputs import LONG_TEXTS, cased_tokenizer_dir, sample_photos, sample_texts
from tests.support.tiny_models import build_tiny_repository

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOGIT_ATOL = 1e-5
TEXT_SPECS = (SENTIMENT, DISASTER)
IMAGE_HOST = "https://images.example.com"

RECORDER = '''\
"""Stands in for a token-level model: records each request's tensors, answers with ONNX Runtime."""
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.record = os.path.join(args["model_repository"], "recorded")
        os.makedirs(self.record, exist_ok=True)
        self.count = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.names}
            np.savez(os.path.join(self.record, "%05d.npz" % self.count), **feeds)
            self.count += 1
            (logits,) = self.session.run(["logits"], feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return responses
'''


@dataclass(frozen=True)
class Row:
    """What one path made of one text or photo: its model inputs and its logits (or probabilities)."""

    inputs: dict[str, np.ndarray]
    scores: np.ndarray


class Onnx:
    """ONNX Runtime sessions on the published files, one per file."""

    def __init__(self) -> None:
        self.sessions: dict[Path, ort.InferenceSession] = {}

    def logits(self, path: Path, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if path not in self.sessions:
            self.sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = self.sessions[path].run(["logits"], dict(feeds))
        return np.asarray(out)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    return build_tiny_repository(root, tokenizer_dir=cased_tokenizer_dir(root / "cased-tokenizer"))


@pytest.fixture(scope="module")
def onnx() -> Onnx:
    return Onnx()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return sample_photos()


def version_dir(repository: Path, spec: TaskSpec) -> Path:
    return repository / spec.model_name / "1"


# --- (d) the reference ---------------------------------------------------------------------------


def reference_texts(repository: Path, spec: TaskSpec, texts: list[str], onnx: Onnx) -> list[Row]:
    folder = version_dir(repository, spec)
    encoder = TextEncoder.from_version_dir(folder)
    rows = []
    for text in texts:
        (batch,) = encoder.groups([text])
        inputs = batch.inputs(spec.input_names)
        rows.append(Row({k: v[0] for k, v in inputs.items()}, onnx.logits(folder / MODEL_FILE, inputs)[0]))
    return rows


def reference_photos(repository: Path, photos: dict[str, bytes], onnx: Onnx) -> list[Row]:
    folder = version_dir(repository, POSE)
    document = json.loads((folder / PREPROCESSING_FILE).read_text())
    image = ImagePreprocessing.from_document(document["image"])
    rows = []
    for data in photos.values():
        pixels = decode_image(data, image, DEFAULT_MAX_PIXELS)
        rows.append(Row({"pixel_values": pixels}, onnx.logits(folder / MODEL_FILE, {"pixel_values": pixels[None]})[0]))
    return rows


def assert_same(path: str, expected: list[Row], got: list[Row], *, probabilities: bool = False) -> None:
    """Identical inputs, scores within LOGIT_ATOL (probabilities: compared with the softmax of the logits)."""
    assert len(got) == len(expected), f"{path}: {len(got)} rows, expected {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert set(have.inputs) == set(want.inputs), f"{path}: row {i} input names"
        for name, tensor in want.inputs.items():
            np.testing.assert_array_equal(have.inputs[name], tensor, err_msg=f"{path}: {name} of row {i}")
        target = softmax(want.scores[None])[0] if probabilities else want.scores
        np.testing.assert_allclose(have.scores, target, atol=LOGIT_ATOL, rtol=0, err_msg=f"{path}: scores of row {i}")


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
def test_long_texts_are_cut_as_the_task_spec_declares(repository: Path, spec: TaskSpec) -> None:
    """The reference every path must equal keeps, of a text past the maximum length, the tokens the spec's
    truncation strategy names: [CLS], the head share of the budget from the start, the rest from the end, [SEP]
    (``head``: all of the budget from the start). Checked against the whole text's ids, not the cutting code."""
    encoder = TextEncoder.from_version_dir(version_dir(repository, spec))
    published = encoder.preprocessing
    assert spec.text is not None and published == spec.text  # what is served is what the spec declares
    whole = TextEncoder(encoder.tokenizer.to_str(), published.truncated_at(1_000_000))
    for text in LONG_TEXTS:
        (full,) = whole.token_ids([text])
        assert len(full) > published.max_length
        head, tail = published.head_tail(published.max_length - 2)
        expected = [full[0], *full[1 : 1 + head], *full[len(full) - 1 - tail : -1], full[-1]]
        (encoded,) = encoder.encode([text])
        assert encoded.ids == expected and len(expected) == published.max_length
        assert (encoded.text_tokens, encoded.truncated) == (len(full), True)


# --- (a) export's evaluation path ------------------------------------------------------------------


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
def test_evaluation_text_path_matches_the_reference(repository: Path, onnx: Onnx, spec: TaskSpec) -> None:
    texts = sample_texts(spec.name)
    folder = version_dir(repository, spec)
    tokenizer, model = folder / TOKENIZER_FILE, folder / MODEL_FILE
    by_index: dict[int, dict[str, np.ndarray]] = {}
    for batch in text_inputs(tokenizer, spec, texts):
        for row, index in enumerate(batch.indices):
            by_index[index] = {name: tensor[row] for name, tensor in batch.inputs(spec.input_names).items()}
    logits = text_logits(model, tokenizer, spec, texts, progress=False)
    got = [Row(by_index[i], logits[i]) for i in range(len(texts))]
    assert_same(f"export evaluation ({spec.name})", reference_texts(repository, spec, texts, onnx), got)


def test_evaluation_image_path_matches_the_reference(
    repository: Path, onnx: Onnx, photos: dict[str, bytes], tmp_path: Path
) -> None:
    paths = []
    for name, data in photos.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    pixels = np.concatenate(list(image_inputs(POSE, paths)))
    logits = image_logits(version_dir(repository, POSE) / MODEL_FILE, POSE, paths, progress=False)
    got = [Row({"pixel_values": p}, s) for p, s in zip(pixels, logits, strict=True)]
    assert_same("export evaluation (pose)", reference_photos(repository, photos, onnx), got)


# --- (b) the facade --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def facade(repository: Path, onnx: Onnx, photos: dict[str, bytes]) -> Iterator[tuple[TestClient, list[Any]]]:
    """The facade app on the published repository; Triton is a fake that records the tensors it gets."""
    sent: list[tuple[str, dict[str, np.ndarray]]] = []

    def logits(model: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        sent.append((model, {name: np.array(tensor) for name, tensor in inputs.items()}))
        return onnx.logits(repository / model / "1" / MODEL_FILE, inputs)

    def host(request: httpx.Request) -> httpx.Response:
        data = photos.get(request.url.path.lstrip("/"))
        return httpx.Response(200, content=data) if data is not None else httpx.Response(404)

    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]  # a public address: images.example.com passes the SSRF checks

    settings = ApiSettings(
        _env_file=None,  # type: ignore[call-arg]
        model_repository=str(repository),
        allowed_image_hosts=[IMAGE_HOST.removeprefix("https://")],
        s3_endpoint_url=None,
    )
    app = create_app(settings, FakeTriton(logits=logits), image_transport=ImageHostTransport(host), resolver=resolver)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, sent


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
def test_facade_text_path_matches_the_reference(
    repository: Path, onnx: Onnx, facade: tuple[TestClient, list[Any]], spec: TaskSpec
) -> None:
    client, sent = facade
    texts = sample_texts(spec.name)
    expected = reference_texts(repository, spec, texts, onnx)
    got = []
    for text in texts:  # one text per request: one Triton call, one row
        sent.clear()
        response = client.post(f"/v1/{spec.name}", json={"texts": [text]})
        assert response.status_code == 200, response.text
        ((model, inputs),) = sent
        assert model == spec.model_name
        answer = response.json()["predictions"][0]["probabilities"]
        got.append(Row({k: v[0] for k, v in inputs.items()}, np.array([answer[label] for label in spec.labels])))
    assert_same(f"facade ({spec.name})", expected, got, probabilities=True)


def test_facade_image_path_matches_the_reference(
    repository: Path, onnx: Onnx, facade: tuple[TestClient, list[Any]], photos: dict[str, bytes]
) -> None:
    client, sent = facade
    sent.clear()
    response = client.post("/v1/pose", json={"image_urls": [f"{IMAGE_HOST}/{name}" for name in photos]})
    assert response.status_code == 200, response.text
    ((model, inputs),) = sent
    assert model == POSE.model_name
    predictions = response.json()["predictions"]
    got = [
        Row({"pixel_values": pixels}, np.array([prediction["probabilities"][label] for label in POSE.labels]))
        for pixels, prediction in zip(inputs["pixel_values"], predictions, strict=True)
    ]
    assert_same("facade (pose)", reference_photos(repository, photos, onnx), got, probabilities=True)


# --- (c) the raw-text models in a real Triton ---------------------------------------------------------


def recorder_config(spec: TaskSpec) -> str:
    config = mc.ModelConfig(name=spec.model_name, backend="python", max_batch_size=spec.batching.max_batch_size)
    for tensor in spec.inputs:
        config.input.add(name=tensor.name, data_type=mc.DataType.Value(tensor.dtype), dims=list(tensor.dims))
    output = spec.output
    config.output.add(name=output.name, data_type=mc.DataType.Value(output.dtype), dims=list(output.dims))
    config.instance_group.add(kind=mc.ModelInstanceGroup.Kind.KIND_CPU, count=1)
    return render_model_config(config)


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A real Triton serving the published ``<task>_text`` models, their ``<task>`` replaced by recorders."""
    served = tmp_path_factory.mktemp("parity-triton") / "repository"
    for spec in TEXT_SPECS:
        shutil.copytree(repository / spec.raw_text_model_name, served / spec.raw_text_model_name)
        recorder = served / spec.model_name
        (recorder / "1").mkdir(parents=True)
        shutil.copyfile(version_dir(repository, spec) / MODEL_FILE, recorder / "1" / MODEL_FILE)
        (recorder / "1" / "model.py").write_text(RECORDER)
        (recorder / CONFIG_FILE).write_text(recorder_config(spec))
    with TritonServer.on_free_ports(served) as server:
        yield httpclient.InferenceServerClient(f"{server.host}:{server.http_port}"), served


def raw_text_request(client: Any, spec: TaskSpec, texts: list[str]) -> np.ndarray:
    data = np.array([[text.encode("utf-8")] for text in texts], dtype=object)
    tensor = httpclient.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    output = httpclient.InferRequestedOutput("probabilities")
    result = client.infer(spec.raw_text_model_name, [tensor], outputs=[output])
    return np.asarray(result.as_numpy("probabilities"))


def recorded(folder: Path, count: int) -> dict[str, np.ndarray]:
    """The ``count``-th request the recorder got (it saves each before it answers)."""
    path = folder / "recorded" / f"{count:05d}.npz"
    for _ in range(100):  # np.savez writes before the response is sent; allow a slow file system
        if path.is_file():
            break
        time.sleep(0.05)
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
def test_raw_text_triton_model_matches_the_reference(
    repository: Path, onnx: Onnx, triton: tuple[Any, Path], spec: TaskSpec
) -> None:
    client, served = triton
    texts = sample_texts(spec.name)
    expected = reference_texts(repository, spec, texts, onnx)
    recorder = served / spec.model_name
    count = len(list((recorder / "recorded").glob("*.npz"))) if (recorder / "recorded").is_dir() else 0
    got = []
    for text in texts:  # one text per request: padded to its own bucket, like the facade
        probabilities = raw_text_request(client, spec, [text])
        inputs = recorded(recorder, count)
        count += 1
        got.append(Row({k: v[0] for k, v in inputs.items()}, probabilities[0]))
    assert_same(f"raw-text Triton model ({spec.name}_text)", expected, got, probabilities=True)

    # All texts in one request: one batch, padded to the bucket of the longest text with the tokenizer's pad id.
    probabilities = raw_text_request(client, spec, texts)
    inputs = recorded(recorder, count)
    pad_id = TextEncoder.from_version_dir(version_dir(repository, spec)).pad_id
    width = max(len(row.inputs["input_ids"]) for row in expected)
    padded = []
    for row in expected:
        ids, mask = row.inputs["input_ids"], row.inputs["attention_mask"]
        n = int(mask.sum())
        widened = {
            "input_ids": np.concatenate([ids[:n], np.full(width - n, pad_id, np.int64)]),
            "attention_mask": np.concatenate([mask[:n], np.zeros(width - n, np.int64)]),
        }
        padded.append(Row(widened, row.scores))
    assert inputs["input_ids"].shape == (len(texts), width)
    batched = [Row({k: v[i] for k, v in inputs.items()}, probabilities[i]) for i in range(len(texts))]
    assert_same(f"raw-text Triton model ({spec.name}_text), one batch", padded, batched, probabilities=True)
