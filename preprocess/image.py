"""Image bytes -> ``pixel_values``: the one decode / orient / resize / normalise every path shares.

:func:`open_image` decodes only what its magic bytes say (JPEG, PNG, WebP, GIF: no other Pillow
decoder ever runs on untrusted bytes), refuses more than ``max_pixels`` pixels before decoding and
turns Pillow's decompression-bomb warning into an error, applies the EXIF orientation (a phone photo
is classified upright, as a person sees it) and converts to RGB. :func:`resize` scales to the task's
square size (bilinear, no crop) and :func:`normalize` maps ``(x - mean) / std`` on the 0-255 scale into
NCHW float32. Training-time augmentation (``export.train``) crops and flips between those steps.
Every refusal is an :class:`~preprocess.errors.InvalidImage` with a message fit for a client.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocess.errors import InvalidImage
from taskspec import ImagePreprocessing

DEFAULT_MAX_PIXELS = 40_000_000
"""Pixel cap for image files read from disk (datasets); the facade passes its own setting."""
RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class ImageFormat:
    """One image file format the platform accepts, declared once: the decoder that runs on it, the media type
    it travels under (upload forms, image hosts' ``Content-Type``) and how its files start."""

    pillow: str
    """Pillow's format name: the only decoder that ever runs on bytes that look like this format."""
    media_type: str
    extension: str
    """File name extension of stored uploads."""
    signatures: tuple[tuple[tuple[int, bytes], ...], ...]
    """Ways a file of this format starts: each is (offset, bytes) pairs that must all match."""

    def matches(self, data: bytes) -> bool:
        return any(all(data[at : at + len(magic)] == magic for at, magic in signature) for signature in self.signatures)


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "image/jpeg", "jpg", (((0, b"\xff\xd8\xff"),),)),
    ImageFormat("PNG", "image/png", "png", (((0, b"\x89PNG\r\n\x1a\n"),),)),
    ImageFormat("WEBP", "image/webp", "webp", (((0, b"RIFF"), (8, b"WEBP")),)),
    ImageFormat("GIF", "image/gif", "gif", (((0, b"GIF87a"),), ((0, b"GIF89a"),))),
)
"""Every format :func:`open_image` decodes; the facade's upload forms and image fetcher accept exactly these."""
IMAGE_MEDIA_TYPES: tuple[str, ...] = tuple(f.media_type for f in IMAGE_FORMATS)


_FORMAT_NAMES = ", ".join(f.pillow for f in IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1].pillow}"


def image_format(media_type: str) -> ImageFormat | None:
    """The format a media type names (``image/jpeg``), or None."""
    return next((f for f in IMAGE_FORMATS if f.media_type == media_type), None)


def sniff_format(data: bytes) -> str | None:
    """Pillow format name from magic bytes (JPEG, PNG, WEBP, GIF), or None."""
    return next((f.pillow for f in IMAGE_FORMATS if f.matches(data)), None)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an upright (EXIF orientation applied) RGB image; raises :class:`InvalidImage`."""
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage(f"not a {_FORMAT_NAMES} image (magic bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(BytesIO(data), formats=[fmt]) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidImage(f"the image has {width}x{height} pixels; the limit is {max_pixels}")
                return ImageOps.exif_transpose(image).convert("RGB")
        except InvalidImage:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidImage(f"the image cannot be decoded: {exc}") from exc
        except Image.DecompressionBombWarning as exc:
            raise InvalidImage(f"the image is a decompression bomb: {exc}") from exc


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`open_image` on the bytes of a file."""
    return open_image(Path(path).read_bytes(), max_pixels)


def resize(image: Image.Image, size: int) -> np.ndarray:
    """``image`` scaled to ``size`` x ``size`` (bilinear, aspect ratio not kept), as uint8 HWC RGB."""
    return np.asarray(image.resize((size, size), RESAMPLE), dtype=np.uint8)


def normalize(pixels: np.ndarray, preprocessing: ImagePreprocessing) -> np.ndarray:
    """uint8 RGB ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` with ``(x - mean) / std`` per channel."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    scaled = (pixels.astype(np.float32) - mean) / std
    return np.ascontiguousarray(np.moveaxis(scaled, -1, -3))


def decode_image(data: bytes, preprocessing: ImagePreprocessing, max_pixels: int) -> np.ndarray:
    """Bytes -> ``(3, size, size)`` float32, as the model was trained; raises :class:`InvalidImage`."""
    return normalize(resize(open_image(data, max_pixels), preprocessing.size), preprocessing)


def decode_batch(bodies: Sequence[bytes], preprocessing: ImagePreprocessing, max_pixels: int) -> np.ndarray:
    """Every image into one ``(n, 3, size, size)`` batch."""
    return np.stack([decode_image(body, preprocessing, max_pixels) for body in bodies])


def read_resized(path: Path | str, size: int) -> np.ndarray:
    """An image file, upright RGB, resized: uint8 ``(size, size, 3)`` (what feature caches and evaluation stack)."""
    return resize(read_image(path), size)
