"""Frame samplers: choose k of t frames, possibly using the question.

The package imports none of its parts, so that importing one part does not import the others and
their libraries (``vqa ask`` builds only the parts of the model it answers with). The registry
imports the modules named in ``PARTS`` when a part is looked up by name (``import_builtin_parts``).
"""

PARTS = (
    "gumbel_topk",
    "soft",
    "uniform",
)
