"""Adapters for the standard VideoQA and caption releases, as distributed (one file per benchmark).

Each registers a ``dataset`` part (``vqa list dataset``); ``docs/datasets.md`` gives each
release's source, folder layout, recipe lines and vocabulary and metric conventions.
"""

from vqa_components.data.benchmarks._base import (
    DEFAULT,
    BenchmarkDataset,
    BenchmarkRecord,
    ReleaseLayoutError,
    UnknownSplitError,
    first_word_family,
)
from vqa_components.data.benchmarks.agqa import AGQADataset
from vqa_components.data.benchmarks.captions import VideoTextJSONLDataset, WebVidDataset
from vqa_components.data.benchmarks.egotaskqa import EgoTaskQADataset
from vqa_components.data.benchmarks.ivqa import IVQADataset
from vqa_components.data.benchmarks.msrvtt_mc import MSRVTTMCDataset
from vqa_components.data.benchmarks.msrvtt_qa import MSRVTTQADataset
from vqa_components.data.benchmarks.msvd_qa import MSVDQADataset
from vqa_components.data.benchmarks.nextqa import NExTQADataset
from vqa_components.data.benchmarks.tgif_qa import TGIFQADataset

__all__ = [
    "DEFAULT",
    "AGQADataset",
    "BenchmarkDataset",
    "BenchmarkRecord",
    "EgoTaskQADataset",
    "IVQADataset",
    "MSRVTTMCDataset",
    "MSRVTTQADataset",
    "MSVDQADataset",
    "NExTQADataset",
    "ReleaseLayoutError",
    "TGIFQADataset",
    "UnknownSplitError",
    "VideoTextJSONLDataset",
    "WebVidDataset",
    "first_word_family",
]
