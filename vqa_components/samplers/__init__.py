"""Frame samplers: choose k of t frames, possibly using the question."""

from vqa_components.samplers import gumbel_topk, soft, uniform  # noqa: F401
