"""Datasets (each registered in ``DATASETS``), video decoding, annotations and the DataModule.

Names are imported when first used, so that reading a video (``vqa ask``) does not import the
DataModule and Lightning. The registry imports the modules named in ``PARTS`` (the datasets).
"""

from __future__ import annotations

import importlib
from typing import Any

PARTS = ("dataset", "synthetic", "benchmarks", "streaming")

_LAZY = {
    "CHANCE_LEVEL": "synthetic",
    "FAMILIES": "synthetic",
    "SYNTHETIC_ANSWERS": "synthetic",
    "SyntheticVQADataset": "synthetic",
    "AnnotationError": "annotations",
    "QARecord": "annotations",
    "load_qa_annotations": "annotations",
    "SkippedSample": "datamodule",
    "StreamingVideoQADataset": "streaming",
    "VideoQADataModule": "datamodule",
    "collate_videoqa": "datamodule",
    "VideoQADataset": "dataset",
    "VideoDecodeError": "video_io",
    "read_video_frames": "video_io",
    "read_video_streams": "video_io",
    "write_video": "video_io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"vqa_components.data.{_LAZY[name]}"), name)
    if name == "benchmarks":
        return importlib.import_module("vqa_components.data.benchmarks")
    raise AttributeError(f"module 'vqa_components.data' has no attribute {name!r}")


__all__ = [
    "CHANCE_LEVEL",
    "FAMILIES",
    "SYNTHETIC_ANSWERS",
    "AnnotationError",
    "QARecord",
    "SkippedSample",
    "StreamingVideoQADataset",
    "SyntheticVQADataset",
    "VideoDecodeError",
    "VideoQADataModule",
    "VideoQADataset",
    "benchmarks",
    "collate_videoqa",
    "load_qa_annotations",
    "read_video_frames",
    "read_video_streams",
    "write_video",
]
