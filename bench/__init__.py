"""Benchmarks of the serving path (``python -m bench``; report in ``bench/results/``)."""
