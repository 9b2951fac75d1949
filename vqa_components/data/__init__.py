"""Datasets (each registered in ``DATASETS``), video decoding, annotations and the DataModule."""

from vqa_components.data import benchmarks  # registers the benchmark adapters
from vqa_components.data.annotations import AnnotationError, QARecord, load_qa_annotations
from vqa_components.data.datamodule import SkippedSample, VideoQADataModule, collate_videoqa
from vqa_components.data.dataset import VideoQADataset
from vqa_components.data.synthetic import CHANCE_LEVEL, FAMILIES, SYNTHETIC_ANSWERS, SyntheticVQADataset
from vqa_components.data.video_io import VideoDecodeError, read_video_frames, read_video_streams, write_video

__all__ = [
    "CHANCE_LEVEL",
    "FAMILIES",
    "SYNTHETIC_ANSWERS",
    "AnnotationError",
    "QARecord",
    "SkippedSample",
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
