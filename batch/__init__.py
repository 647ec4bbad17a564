"""Batch classification jobs on Ray Data: a file (or folder, or S3 prefix) of texts or image URLs,
classified by the served models through the same preprocessing as the facade, written in parts.

Library first (:func:`batch.runner.run_job`), thin command line second (``python -m batch classify``,
:mod:`batch.cli`). See docs/batch.md.
"""
