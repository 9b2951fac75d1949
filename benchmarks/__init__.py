"""The benchmark suite: ``python -m benchmarks --list`` (see ``benchmarks/__main__.py``)."""
