"""``python -m benchmarks``: run every benchmark, one by name, list them, or rewrite
``docs/benchmarks.md`` from their results (``benchmarks/_runner.py``)."""

import sys

from benchmarks._runner import main

sys.exit(main())
