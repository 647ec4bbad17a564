"""preprocess: the one text encoding, image decoding and softmax, against values a person can check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers

from export.raw_text import shipped_code
from export.validate import validate_task
from preprocess.errors import InvalidArtifacts, InvalidImage
from preprocess.image import DEFAULT_MAX_PIXELS, decode_image, normalize, open_image, sniff_format
from preprocess.probabilities import softmax
from preprocess.text import TextEncoder
from taskspec import DISASTER, POSE, TOKENIZER_FILE, ImagePreprocessing, TextPreprocessing
from tests.preprocess_inputs import cased_tokenizer_dir, encode_image
from tests.support.tiny_models import default_tokenizer_dir, publish_tiny_model

assert DISASTER.text is not None and POSE.image is not None
TEXT = DISASTER.text  # buckets 16, 32, 64
IMAGE = POSE.image  # 224 x 224, (x - 127) / 128
MINILM = (default_tokenizer_dir() / TOKENIZER_FILE).read_text()


def word_level(vocab: dict[str, int]) -> str:
    """A tokenizer.json mapping whitespace-separated words through ``vocab`` (no special tokens)."""
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer.to_str()


# --- text --------------------------------------------------------------------------------------


def test_rows_are_padded_with_the_tokenizers_pad_id_never_a_guessed_zero() -> None:
    encoder = TextEncoder(word_level({"[UNK]": 0, "fire": 1, "[PAD]": 7}), TEXT)
    batch = encoder.batch(["fire fire", "fire"])
    assert encoder.pad_id == 7
    assert batch.input_ids.tolist() == [[1, 1] + [7] * 14, [1] + [7] * 15]
    assert batch.attention_mask.tolist() == [[1, 1] + [0] * 14, [1] + [0] * 15]
    assert TextEncoder(word_level({"[UNK]": 0, "<pad>": 3}), TEXT).pad_id == 3
    with pytest.raises(InvalidArtifacts, match="no pad token"):
        TextEncoder(word_level({"[UNK]": 0, "fire": 1}), TEXT)


def test_declared_lowercase_is_applied_even_when_the_tokenizer_keeps_case(tmp_path: Path) -> None:
    cased = (cased_tokenizer_dir(tmp_path) / TOKENIZER_FILE).read_text()
    lowered = TextEncoder(cased, TEXT)
    kept = TextEncoder(cased, replace(TEXT, lowercase=False))
    assert lowered.token_ids(["Forest FIRE"]) == lowered.token_ids(["forest fire"]) == [[101, 3224, 2543, 102]]
    assert kept.token_ids(["Forest FIRE"]) != kept.token_ids(["forest fire"])
    # The published (uncased) tokenizer lowercases by itself: declaring it changes no id.
    uncased = TextEncoder(MINILM, TEXT)
    assert uncased.token_ids(["Zürich FIRE"]) == TextEncoder(MINILM, replace(TEXT, lowercase=False)).token_ids(
        ["Zürich FIRE"]
    )


def test_long_texts_keep_their_head_and_the_closing_sep() -> None:
    encoder = TextEncoder(MINILM, TEXT)
    words = [f"w{i}" for i in range(200)]
    (full,) = TextEncoder(MINILM, TEXT.truncated_at(4096)).token_ids([" ".join(words)])
    (cut,) = encoder.token_ids([" ".join(words)])
    assert len(full) > 64 and len(cut) == 64
    assert cut[:-1] == full[:63] and cut[-1] == full[-1] == 102  # [CLS] + the first 62 tokens + [SEP]
    assert encoder.batch([" ".join(words)]).input_ids.shape == (1, 64)


def test_head_truncation_keeps_what_the_tokenizers_own_truncation_keeps() -> None:
    # One strategy implementation for every path: "head" must be exactly the tokenizer's right truncation, also for
    # a text that spells special tokens itself (they count as content, only the added [CLS]/[SEP] frame the row).
    texts = [" ".join(f"w{i}" for i in range(300)), "[CLS] [SEP] " * 40 + "end", "short", "[SEP]"]
    reference = Tokenizer.from_str(MINILM)
    reference.no_padding()
    reference.enable_truncation(max_length=TEXT.max_length)
    assert TextEncoder(MINILM, TEXT).token_ids(texts) == [e.ids for e in reference.encode_batch(texts)]


def test_head_tail_keeps_the_first_and_the_last_tokens_and_reports_the_cut() -> None:
    words = [f"w{i}" for i in range(200)]
    (full,) = TextEncoder(MINILM, TEXT.truncated_at(4096)).token_ids([" ".join(words)])
    content = full[1:-1]
    encoder = TextEncoder(MINILM, replace(TEXT, truncation="head+tail", head_fraction=0.25))
    (encoded, short) = encoder.encode([" ".join(words), "fire"])
    # 64 tokens: [CLS], a quarter of the 62-token budget from the start (16), the last 46, [SEP]
    assert encoded.ids == [101, *content[:16], *content[-46:], 102]
    assert encoded.text_tokens == len(full) and encoded.truncated
    assert (short.ids, short.text_tokens, short.truncated) == ([101, 2543, 102], 3, False)
    tail_only = TextEncoder(MINILM, replace(TEXT, truncation="head+tail", head_fraction=0.0))
    assert tail_only.token_ids([" ".join(words)]) == [[101, *content[-62:], 102]]
    # Training on shorter rows keeps the strategy and its split.
    (trained,) = TextEncoder(MINILM, encoder.preprocessing.truncated_at(32)).token_ids([" ".join(words)])
    assert trained == [101, *content[:8], *content[-22:], 102]


def test_groups_pad_each_text_to_its_bucket_and_batch_pads_to_the_longest() -> None:
    encoder = TextEncoder(MINILM, TEXT)
    texts = ["fire", "word " * 20, "ok", "word " * 14]  # 3, 22, 3 and 16 tokens
    groups = encoder.groups(texts)
    assert [(g.indices, g.length) for g in groups] == [((0, 2, 3), 16), ((1,), 32)]
    assert encoder.batch(texts).input_ids.shape == (4, 32)
    assert encoder.batch(texts, "max_length").input_ids.shape == (4, 64)
    (first, *_) = groups[0].chunks(2)
    assert first.indices == (0, 2) and first.input_ids.shape == (2, 16)
    assert set(groups[0].inputs(("ids", "mask"))) == {"ids", "mask"}
    with pytest.raises(ValueError, match="does not fit"):
        encoder.pad([[101, 5, 6, 102]], 3)


def test_text_preprocessing_round_trips_through_its_published_document() -> None:
    document = TEXT.to_document()
    assert document == {
        "buckets": [16, 32, 64],
        "max_length": 64,
        "lowercase": True,
        "truncation": "head",
        "head_fraction": 0.25,
        "tokenizer_file": "tokenizer.json",
    }
    assert TextPreprocessing.from_document(json.loads(json.dumps(document))) == TEXT
    head_tail = replace(TEXT, truncation="head+tail", head_fraction=0.5)
    assert TextPreprocessing.from_document(json.loads(json.dumps(head_tail.to_document()))) == head_tail
    # A version published before the truncation field: head, as it always was.
    assert TextPreprocessing.from_document({"buckets": [64, 16, 32]}) == TEXT
    for bad, message in (
        ({"buckets": []}, "buckets"),
        ({"buckets": [1, 8]}, "buckets"),
        ({"buckets": [16, 32], "max_length": 64}, "max_length"),
        ({"buckets": [16], "truncation": "tail"}, "truncation"),
        ({"buckets": [16], "lowercase": "yes"}, "lowercase"),
        ({"buckets": [16], "truncation": "head+tail", "head_fraction": 1.5}, "head_fraction"),
        ({"buckets": [16], "truncation": "head+tail", "head_fraction": "half"}, "head_fraction"),
    ):
        with pytest.raises(ValueError, match=message):
            TextPreprocessing.from_document(bad)


def test_published_version_folder_gives_the_same_encoder(tmp_path: Path) -> None:
    version = publish_tiny_model(DISASTER, tmp_path / "repo").version_dir
    from_folder = TextEncoder.from_version_dir(version)
    assert from_folder.preprocessing == TEXT
    texts = ["Forest fire near La Ronge", "ok"]
    assert from_folder.token_ids(texts) == TextEncoder(MINILM, TEXT).token_ids(texts)
    (version / "preprocessing.json").write_text(json.dumps({"text": {"buckets": [16], "truncation": "middle"}}))
    with pytest.raises(InvalidArtifacts, match="truncation"):
        TextEncoder.from_version_dir(version)


def test_the_raw_text_model_carries_exact_copies_of_the_package(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_tiny_model(DISASTER, repo)
    version = repo / DISASTER.raw_text_model_name / "1"
    code = shipped_code()
    assert {"model.py", "preprocess/text.py", "preprocess/probabilities.py", "taskspec/__init__.py"} <= set(code)
    for relative, source in code.items():
        assert (version / relative).read_bytes() == source.read_bytes(), relative
    assert validate_task(repo, DISASTER) == []
    copy = version / "preprocess" / "text.py"
    copy.write_text(copy.read_text().replace('PAD_TOKENS = ("[PAD]", "<pad>")', 'PAD_TOKENS = ("[UNK]",)'))
    assert [p for p in validate_task(repo, DISASTER) if "preprocess/text.py differs" in p]


# --- images ------------------------------------------------------------------------------------


def halves(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 2] = (255, 0, 0)
    pixels[:, size[0] // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(None, None, None), (6, "red", "blue"), (8, "blue", "red"), (3, None, None)],
)
def test_photos_are_turned_upright_by_their_exif_orientation(orientation, top, bottom) -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to view": the stored left half ends on top."""
    image = open_image(encode_image(halves(), "PNG", orientation=orientation), DEFAULT_MAX_PIXELS)
    pixels = np.asarray(image, np.float32)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])

    def colour(region: np.ndarray) -> str:
        mean = region.reshape(-1, 3).mean(axis=0)
        return "red" if np.abs(mean - red).max() < 30 else "blue" if np.abs(mean - blue).max() < 30 else "mixed"

    if top is None:  # not rotated by 90 degrees: 40 wide; orientation 3 (180 degrees) swaps left and right
        assert image.size == (40, 20)
        expected = ("blue", "red") if orientation == 3 else ("red", "blue")
        assert (colour(pixels[:, :20]), colour(pixels[:, 20:])) == expected
    else:
        assert image.size == (20, 40)
        assert (colour(pixels[:20]), colour(pixels[20:])) == (top, bottom)


def test_every_mode_becomes_rgb_normalised_nchw_float32() -> None:
    gray = Image.fromarray(np.full((30, 50), 255, np.uint8))
    rgba = Image.new("RGBA", (9, 5), (1, 127, 255, 0))
    for data in (encode_image(gray, "PNG"), encode_image(rgba, "PNG"), encode_image(rgba.convert("P"), "GIF")):
        pixels = decode_image(data, IMAGE, DEFAULT_MAX_PIXELS)
        assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32 and pixels.flags.c_contiguous
    uniform = decode_image(encode_image(rgba, "PNG"), IMAGE, DEFAULT_MAX_PIXELS)
    assert uniform[:, 0, 0].tolist() == [(1 - 127) / 128, 0.0, (255 - 127) / 128]  # exact: a flat image
    batch = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    assert np.array_equal(normalize(batch, IMAGE)[1, 2], (batch[1, :, :, 2].astype(np.float32) - 127) / 128)


def test_refusals_are_invalid_image_errors_with_a_reason() -> None:
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP" and sniff_format(b"BM....") is None
    with pytest.raises(InvalidImage, match="magic bytes"):
        open_image(b"BM" + b"\x00" * 100, DEFAULT_MAX_PIXELS)
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        open_image(b"\xff\xd8\xff\xe0" + b"\x00" * 100, DEFAULT_MAX_PIXELS)
    with pytest.raises(InvalidImage, match="the image has 40x20 pixels; the limit is 799"):
        open_image(encode_image(halves(), "PNG"), 799)
    assert isinstance(InvalidImage("x"), ValueError)


def test_image_preprocessing_round_trips_through_its_published_document() -> None:
    assert ImagePreprocessing.from_document(json.loads(json.dumps(IMAGE.to_document()))) == IMAGE
    with pytest.raises(ValueError, match="std"):
        ImagePreprocessing.from_document({"size": 224, "mean": [1, 2, 3], "std": [1, 0, 1]})


# --- probabilities -----------------------------------------------------------------------------


def test_softmax_is_stable_and_rows_sum_to_one() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0], [0.0, 0.0], [-5.0, 5.0]], np.float32))
    assert probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[0].tolist() == [1.0, 0.0] and probabilities[1].tolist() == [0.5, 0.5]
    assert probabilities[2, 1] == pytest.approx(1 / (1 + np.exp(-10)))
