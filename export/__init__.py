"""Train, export, validate and publish the platform's classifiers into the Triton model repository.

Library first (:mod:`export.build`; the one export -> validate -> publish path :mod:`export.pipeline`;
the per-task registry :mod:`export.registry`), thin command line second (``python -m export``,
:mod:`export.cli`). See docs/models.md.
"""
