"""Frame samplers: choose k of t frames, possibly using the question. ``PARTS``: the modules of the
built-in ones, imported by the registry (``registry.import_builtin_parts``), not here."""

PARTS = (
    "gumbel_topk",
    "soft",
    "uniform",
)
