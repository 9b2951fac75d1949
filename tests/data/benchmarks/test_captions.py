"""webvid (metadata/results_2M_{split}.csv, videos/<page_dir>/<videoid>.mp4) and video_text_jsonl
((video, text) lines): caption samples, errors, caption pretraining through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import ReleaseLayoutError, VideoTextJSONLDataset, WebVidDataset

WEBVID = ["videoid", "contentUrl", "duration", "page_dir", "name"]
URL = "https://ak.picdn.net/shutterstock/videos/{}/preview/stock-footage.mp4"


@pytest.fixture
def webvid(tmp_path, mini):
    root = tmp_path / "WebVid"
    rows = [
        [
            31353427,
            URL.format(31353427),
            "PT00H00M15S",
            "023701_023750",
            "Merida, mexico - may 23, 2017: tourists",
        ],
        [14781349, URL.format(14781349), "PT00H00M29S", "006501_006550", "Waving pastel colored fabric"],
        [2610028, URL.format(2610028), "PT00H00M11S", "006501_006550", "Flying over the ice, aerial shot"],
        [21234567, URL.format(21234567), "PT00H00M08S", "023701_023750", "Young woman laughing, slow motion"],
    ]
    mini.write_csv(root / "metadata" / "results_2M_train.csv", WEBVID, rows)
    mini.write_csv(root / "metadata" / "results_2M_val.csv", WEBVID, rows[:2])
    for i, (vid, _, _, page, _) in enumerate(rows):
        mini.mp4(root / "videos" / page / f"{vid}.mp4", level=40 * i)
    return root


def test_webvid_samples_are_captions(webvid):
    ds = WebVidDataset(str(webvid), "train", num_frames=2)
    assert len(ds) == 4 and ds.answer_vocab == [] and ds.families == []
    assert ds.video_path(1) == webvid / "videos" / "006501_006550" / "14781349.mp4"
    sample = ds[1]
    assert sample["caption"] == sample["question"] == "Waving pastel colored fabric"
    assert (
        sample["video_id"] == "14781349"
        and sample["family"] == "caption"
        and sample["video"].shape == (2, 3, 32, 32)
    )
    assert "answer_idx" not in sample and "answer" not in sample
    assert WebVidDataset(str(webvid), "val").annotation_file.name == "results_2M_val.csv"
    with pytest.raises(
        ReleaseLayoutError, match=r"results_10M_train.csv: webvid: expected the WebVid-10M train CSV"
    ):
        WebVidDataset(str(webvid), "train", cut="10M")


def test_video_text_jsonl(tmp_path, mini):
    root = tmp_path / "pairs"
    mini.write_jsonl(root / "train.jsonl", [
        {"video": "a/clip1.mp4", "text": "a man cooks pasta", "id": "p1"},
        {"video": "b/clip2.mp4", "text": ["two dogs play", "dogs playing in a park"]},
        {"video": "a/clip1.mp4", "text": "the end of the cooking", "start": 0.5, "end": 1.0},
    ])  # fmt: skip
    mini.mp4(root / "videos" / "a" / "clip1.mp4", level=0)
    mini.mp4(root / "videos" / "b" / "clip2.mp4", level=100)
    ds = VideoTextJSONLDataset(str(root), "train", num_frames=2)
    assert [r.caption for r in ds.records] == [
        "a man cooks pasta", "two dogs play", "dogs playing in a park", "the end of the cooking"
    ]  # fmt: skip
    assert [r.video_id for r in ds.records] == ["a/clip1", "b/clip2", "b/clip2", "a/clip1"]
    assert (ds.records[3].start, ds.records[3].end) == (0.5, 1.0)
    late = ds[3]["video"].float().mean(dim=(1, 2, 3)) / 4  # frames 4..7 of the clip (level 4 i)
    assert float(late.min()) > 3.5
    (root / "train.jsonl").write_text(json.dumps({"video": "a/clip1.mp4", "text": 7}) + "\n")
    with pytest.raises(
        AnnotationError,
        match=r"train.jsonl: record 0 \(line 1\) \[video='a/clip1.mp4'\]: field 'text': must be a string",
    ):
        VideoTextJSONLDataset(str(root), "train")


def test_caption_pretraining_through_the_cli(webvid, tmp_path, mini):
    cfg = mini.recipe("webvid", {"root": str(webvid)}, "captions", tmp_path / "run")
    cfg["checkpoint"] = {"monitor": "val/loss", "mode": "min"}
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


def test_retrieval_ranks_through_the_cli(tmp_path, mini, monkeypatch):
    """A retrieval head's test figures are ranks over the whole split. Embeddings fixed at angles
    (video 0, 90, 180, 270 degrees; text 10, 200, 170, 260), pairs 1 and 2 captions of one clip:
    text 1's true video ranks 2nd (video 3 is closer; video 2, its own clip, is not counted),
    video 1's true text ranks 2nd (text 0 ties text 2 but text 2 is its own clip): R@1 3/4 both ways."""
    from vqa_components.heads.retrieval import RetrievalHead

    root = tmp_path / "pairs"
    mini.write_jsonl(root / "test.jsonl", [
        {"video": "a/clip1.mp4", "text": "a man cooks pasta"},
        {"video": "b/clip2.mp4", "text": ["two dogs play", "dogs playing in a park"]},
        {"video": "a/clip1.mp4", "text": "the end of the cooking", "start": 0.5, "end": 1.0},
    ])  # fmt: skip
    mini.mp4(root / "videos" / "a" / "clip1.mp4", level=0)
    mini.mp4(root / "videos" / "b" / "clip2.mp4", level=100)

    def unit(degrees):
        r = torch.deg2rad(torch.tensor(degrees))
        return torch.stack([r.cos(), r.sin()], dim=1)

    monkeypatch.setattr(RetrievalHead, "embeddings", lambda self, out: (unit([0.0, 90, 180, 270]), unit([10.0, 200, 170, 260])))
    cfg = mini.recipe("video_text_jsonl", {"root": str(root)}, "captions", tmp_path / "run",
                      train_split=None, val_split=None, eval_batch_size=4)  # fmt: skip
    cfg["model"]["head"] = {"name": "retrieval", "video_dim": 32, "text_dim": 32, "embed_dim": 16}
    cfg["model"]["objectives"] = [{"name": "contrastive", "video_dim": 32, "text_dim": 32}]
    code, out = mini.run_cli("test", cfg, tmp_path)
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    ranks = {k[len("test/") :]: v for k, v in metrics.items() if k[len("test/") :].startswith(("t2v", "v2t"))}
    assert ranks == pytest.approx({
        "t2v_r1": 0.75, "t2v_r5": 1.0, "t2v_r10": 1.0, "t2v_median_rank": 1.0,
        "v2t_r1": 0.75, "v2t_r5": 1.0, "v2t_r10": 1.0, "v2t_median_rank": 1.0,
    })  # fmt: skip
    assert metrics["test/num_samples"] == 4 and "test/acc" not in metrics
    assert "t2v_r1" in out and "75.00 %" in out and metrics["protocol"]["kind"] == "captions"


@pytest.mark.parametrize("recipe", ["recipes/evilm/tokenizer.yaml", "recipes/evilm/pretrain.yaml",
                                    "recipes/evilm/ablations/pretrain_vtm.yaml",
                                    "recipes/evilm/ablations/pretrain_vtm_mlm.yaml",
                                    "recipes/evilm/ablations/tokenizer_bce.yaml"])
def test_the_evilm_pretraining_recipes_read_the_miniature_webvid_like_their_example_batch(webvid, mini, recipe):
    mini.check_recipe_batch(recipe, {"root": str(webvid)})


def test_webvid_reads_a_csv_given_directly(webvid):
    """The files as downloaded from the webvid repository: results_2M_<split>.csv with no metadata/
    folder, found in root, or the CSV given as root or as csv."""
    for name in ("train", "val"):
        (webvid / "metadata" / f"results_2M_{name}.csv").rename(webvid / f"results_2M_{name}.csv")
    assert WebVidDataset(str(webvid), "val").annotation_file == webvid / "results_2M_val.csv"
    direct = WebVidDataset(str(webvid / "results_2M_val.csv"), "val", num_frames=2)
    assert len(direct) == 2 and direct.video_path(1) == webvid / "videos" / "006501_006550" / "14781349.mp4"
    assert isinstance(direct[1], dict)
    other = webvid / "elsewhere.csv"
    (webvid / "results_2M_train.csv").rename(other)
    assert len(WebVidDataset(str(webvid), "train", csv=str(other))) == 4


def test_testing_webvid_says_to_test_on_val_in_one_line(webvid):
    """What `vqa test` prints (an AnnotationError: `vqa: error: <this line>`, exit status 1, as for a
    missing release, test_msrvtt_qa.py); built as the test loader's dataset is."""
    from vqa_components.data.datamodule import VideoQADataModule

    dm = VideoQADataModule("webvid", {"root": str(webvid)}, train_split=None, num_workers=0)
    with pytest.raises(AnnotationError) as err:
        dm.setup("test")
    assert str(err.value) == (
        f"{webvid}: webvid: WebVid has no test split (it has train, val): "
        "to evaluate, run `vqa test` with --data.test_split val"
    )
