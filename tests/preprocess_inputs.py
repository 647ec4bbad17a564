"""Raw inputs for the preprocessing tests: texts, photos (EXIF-rotated and odd-sized ones) and a cased tokenizer.

Real rows come from the shared datasets when they are present (``MTC_DATA_DIR`` or ``../shared/datasets``;
they are never copied into the repository); the built-in texts and scikit-image's bundled photos are
always there.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from export.data import resolve_data_dir
from taskspec import TOKENIZER_FILE
from tests.support.tiny_models import default_tokenizer_dir

ORIENTATION = 0x0112  # the EXIF tag

EDGE_TEXTS = (
    "Forest FIRE near La Ronge Sask. Canada, RESIDENTS asked to evacuate",  # capitals: lowercase matters
    "Zürich — naïve CAFÉ ☕ 😀 #Flood @user http://t.co/x",  # accents, emoji, a mention and a URL
    "ok",
    "An ending I will never forget.<br /><br />Two hours well spent. " * 40,  # past every maximum length
    "word " * 14,  # 16 tokens with [CLS]/[SEP]: exactly the disaster model's smallest bucket
)
VERDICT = " But the ending is a TRIUMPH"
"""How the long texts end: a head-only cut never reads it, a head+tail cut does."""
OPENING = "The first hour is slow and talky. " + "The middle drifts along. " * 4000
LONG_TEXTS = tuple(OPENING[: chars - len(VERDICT)] + VERDICT for chars in (6_000, 100_000))
"""A 6,000- and a 100,000-character review (5,000 was the facade's old per-text limit), opening and closing
differently so that which tokens survive the cut shows."""


def sample_texts(task: str, rows: int = 3) -> list[str]:
    """The edge cases, the long texts, and ``rows`` real reviews (sentiment) or tweets (disaster) when the datasets
    are here."""
    texts = [*EDGE_TEXTS, *LONG_TEXTS]
    data = resolve_data_dir()
    if task == "sentiment" and (data / "imdb" / "val.csv.gz").is_file():
        with gzip.open(data / "imdb" / "val.csv.gz", "rt", encoding="utf-8") as handle:
            texts += [row["text"] for _, row in zip(range(rows), csv.DictReader(handle), strict=False)]
    if task == "disaster" and (data / "disaster_tweets" / "train.csv").is_file():
        with (data / "disaster_tweets" / "train.csv").open(encoding="utf-8") as handle:
            texts += [row["text"] for row in list(csv.DictReader(handle))[-rows:]]
    return texts


def encode_image(image: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    """``image`` saved as ``fmt`` (with an EXIF orientation tag when given)."""
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_photos(har_rows: int = 2) -> dict[str, bytes]:
    """File name -> bytes: scikit-image photos in every accepted format, mode, odd sizes, EXIF orientations."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]
    coffee = Image.fromarray(data.coffee())  # type: ignore[no-untyped-call]
    chelsea = Image.fromarray(data.chelsea())  # type: ignore[no-untyped-call]
    camera = Image.fromarray(data.camera())  # type: ignore[no-untyped-call]
    photos = {
        "astronaut-301x199.jpg": encode_image(astronaut.resize((301, 199)), "JPEG"),
        "coffee-exif6.jpg": encode_image(coffee.transpose(Image.Transpose.ROTATE_90), "JPEG", orientation=6),
        "chelsea-exif3.jpg": encode_image(chelsea.transpose(Image.Transpose.ROTATE_180), "JPEG", orientation=3),
        "chelsea-exif8.webp": encode_image(chelsea.transpose(Image.Transpose.ROTATE_270), "WEBP", orientation=8),
        "camera-gray-257x311.png": encode_image(camera.resize((257, 311)), "PNG"),
        "astronaut-rgba-123x77.png": encode_image(astronaut.resize((123, 77)).convert("RGBA"), "PNG"),
        "coffee-palette.gif": encode_image(coffee.resize((99, 150)).convert("P"), "GIF"),
        "wide-1000x60.jpg": encode_image(coffee.resize((1000, 60)), "JPEG"),
        "tiny-3x7.png": encode_image(Image.fromarray(np.arange(63, dtype=np.uint8).reshape(7, 3, 3) * 4), "PNG"),
    }
    har = resolve_data_dir() / "human_action" / "val"
    if har.is_dir():
        for path in sorted(har.glob("*/*.jpg"))[:: 450 // max(1, har_rows)][:har_rows]:
            photos[f"har-{path.parent.name}-{path.name}"] = path.read_bytes()
    return photos


def cased_tokenizer_dir(target: Path) -> Path:
    """The MiniLM ``tokenizer.json`` with its normalizer's own lowercasing off, in ``target``.

    With it, only a declared ``lowercase`` lowercases: a path that skipped it would send other ids.
    """
    document = json.loads((default_tokenizer_dir() / TOKENIZER_FILE).read_text())
    assert document["normalizer"]["type"] == "BertNormalizer"
    document["normalizer"]["lowercase"] = False
    target.mkdir(parents=True, exist_ok=True)
    (target / TOKENIZER_FILE).write_text(json.dumps(document))
    return target
