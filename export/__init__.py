"""Train, export, validate and publish the platform's classifiers into the Triton model repository.

Library first (:mod:`export.build`, :mod:`export.publish`, :mod:`export.onnx_export`,
:mod:`export.testing`), thin command line second (``python -m export``, :mod:`export.cli`).
See docs/models.md.
"""
