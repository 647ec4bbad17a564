"""The errors of :mod:`preprocess`: callers map them onto their own (the facade's ``BadImage`` is a 400)."""

from __future__ import annotations


class PreprocessingError(ValueError):
    """An input or an artifact the preprocessing cannot use; the message is fit to show a client."""


class InvalidImage(PreprocessingError):
    """Bytes that are not an acceptable image: unknown format, undecodable, too many pixels, a bomb."""


class InvalidArtifacts(PreprocessingError):
    """A tokenizer or ``preprocessing.json`` that cannot be used as published (e.g. no pad token)."""
