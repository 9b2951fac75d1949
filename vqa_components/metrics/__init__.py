"""Evaluation metrics (torchmetrics), correct under DDP: their states are summed across ranks."""

from vqa_components.metrics.grouped_accuracy import GroupedAccuracy

__all__ = ["GroupedAccuracy"]
