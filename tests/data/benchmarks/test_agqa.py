"""agqa: AGQA_balanced/{train,test}_balanced.txt (one JSON object keyed by question id) and
Charades_v1_480/<video_id>.mp4; semantic families, the other breakdowns, errors, a CLI fit."""

from __future__ import annotations

import json

import pytest
import torch

from vqa_components.data.annotations import AnnotationError
from vqa_components.data.benchmarks import AGQADataset, ReleaseLayoutError


def question(text, answer, video, semantic, structural, ans_type, reasoning):
    return {
        "question": text, "answer": answer, "video_id": video, "global": reasoning, "local": "yes-no-o4",
        "ans_type": ans_type, "steps": 3, "semantic": semantic, "structural": structural, "novel_comp": 0,
        "more_steps": 0, "program": "Exists(blanket, Iterate(video, Filter(frame, [objects])))",
        "sg_grounding": {"27-36": [], "43-59": ["c076/1"]},
    }  # fmt: skip


TRAIN = {
    "YSKX3-8": question("Were they interacting with a blanket while holding a pillow?", "no", "YSKX3", "object",
                        "verify", "binary", ["exists"]),
    "YSKX3-9": question("Was a blanket one of the things they were interacting with?", "yes", "YSKX3", "object",
                        "verify", "binary", ["exists"]),
    "LSKA2-2205": question("Was the person walking before or after taking the object?", "after", "LSKA2",
                           "relation", "compare", "binary", ["rel-act", "sequencing"]),
    "LSKA2-7": question("What did they take?", "a book", "LSKA2", "object", "query", "open", ["obj-rel"]),
    "0A8ZT-1": question("What did they do first?", "holding a pillow", "0A8ZT", "action", "query", "open",
                        ["sequencing"]),
}  # fmt: skip
TEST = {
    "0A8ZT-3": question("Did they hold a pillow?", "yes", "0A8ZT", "action", "verify", "binary", ["exists"]),
    "YSKX3-20": question(
        "What were they sitting on?", "a sofa", "YSKX3", "object", "query", "open", ["obj-rel"]
    ),
}


@pytest.fixture
def release(tmp_path, mini):
    root = tmp_path / "agqa"
    mini.write_json(root / "AGQA_balanced" / "train_balanced.txt", TRAIN)
    mini.write_json(root / "AGQA_balanced" / "test_balanced.txt", TEST)
    for i, vid in enumerate(("YSKX3", "LSKA2", "0A8ZT")):
        mini.mp4(root / "Charades_v1_480" / f"{vid}.mp4", level=60 * i)
    return root


def test_records_families_and_breakdowns(release):
    ds = AGQADataset(str(release), "train", num_frames=2)
    assert ds.families == ["object", "relation", "action"]
    assert ds.answer_vocab == ["a book", "after", "holding a pillow", "no", "yes"]  # every training answer
    assert [r.id for r in ds.records] == list(TRAIN)
    sample = ds[2]
    assert sample["family"] == "relation" and sample["answer"] == "after" and sample["answer_idx"] == 1
    assert sample["structural"] == "compare" and sample["ans_type"] == "binary"
    assert sample["reasoning"] == ["rel-act", "sequencing"] and sample["video_id"] == "LSKA2"
    assert sample["video"].shape == (2, 3, 32, 32)
    test = AGQADataset(str(release), "test")
    assert [test[i]["answer_idx"] for i in range(2)] == [4, -1]
    assert AGQADataset(str(release), "val").annotation_file.name == "test_balanced.txt"


def test_files_directly_in_the_root_and_held_out_videos(release, tmp_path, mini):
    flat = tmp_path / "flat"
    (release / "AGQA_balanced").rename(flat)
    (release / "Charades_v1_480").rename(flat / "Charades_v1_480")
    assert AGQADataset(str(flat), "test").annotation_file == flat / "test_balanced.txt"
    train = AGQADataset(str(flat), "train", val_fraction=0.3)  # sha1: LSKA2, 0A8ZT held out, not YSKX3
    val = AGQADataset(str(flat), "val", val_fraction=0.3)
    assert val.annotation_file.name == "train_balanced.txt"
    assert {r.video_id for r in train.records} == {"YSKX3"} and {r.video_id for r in val.records} == {
        "LSKA2",
        "0A8ZT",
    }
    assert train.answer_vocab == ["no", "yes"] and len(val) == 3


def test_errors(release):
    (release / "AGQA_balanced" / "test_balanced.txt").write_text(json.dumps([1, 2]))
    with pytest.raises(AnnotationError, match="must be one JSON object mapping question ids to records"):
        AGQADataset(str(release), "test")
    bad = {"X-1": {**TEST["0A8ZT-3"], "semantic": "colour"}}
    (release / "AGQA_balanced" / "test_balanced.txt").write_text(json.dumps(bad))
    with pytest.raises(AnnotationError) as err:
        AGQADataset(str(release), "test")
    assert "test_balanced.txt: record 0 [id='X-1', video_id='0A8ZT']: field 'semantic'" in str(err.value)
    (release / "AGQA_balanced" / "test_balanced.txt").unlink()
    with pytest.raises(
        ReleaseLayoutError, match=r"test_balanced.txt: agqa: expected the AGQA 2.0 balanced test file"
    ):
        AGQADataset(str(release), "test")


def test_fit_through_the_cli(release, tmp_path, mini):
    cfg = mini.recipe("agqa", {"root": str(release)}, "open_ended", tmp_path / "run", num_answers=5)
    assert mini.run_cli("fit", cfg, tmp_path)[0] == 0


def test_the_videodistill_recipe_reads_the_miniature_release_like_its_example_batch(release, mini):
    mini.check_recipe_batch("recipes/videodistill/finetune_agqa.yaml", {"root": str(release)})


def test_accuracy_per_category_through_the_cli(release, tmp_path, mini, monkeypatch):
    """A question counts toward each of its reasoning categories. Answers [yes, a book, a book, yes]
    are right for q1 and q2: semantic action 1, object 1/2, relation 0; structural verify 1/2,
    query 1, compare 0; binary 1/3, open 1; exists 1/2, obj-rel 1, sequencing 1/2, rel-act 0."""
    from vqa_components.heads.answer_classifier import AnswerClassifier

    mini.write_json(release / "AGQA_balanced" / "test_balanced.txt", {
        "0A8ZT-3": question("Did they hold a pillow?", "yes", "0A8ZT", "action", "verify", "binary", ["exists"]),
        "LSKA2-9": question("What did they take first?", "a book", "LSKA2", "object", "query", "open",
                            ["obj-rel", "sequencing"]),
        "LSKA2-10": question("Before or after walking?", "after", "LSKA2", "relation", "compare", "binary",
                             ["rel-act", "sequencing"]),
        "YSKX3-21": question("Did they touch a blanket?", "no", "YSKX3", "object", "verify", "binary", ["exists"]),
    })  # fmt: skip
    monkeypatch.setattr(AnswerClassifier, "answers", lambda self, out: torch.tensor([4, 0, 0, 4][: len(out.logits)]))
    cfg = mini.recipe("agqa", {"root": str(release)}, "open_ended", tmp_path / "run", num_answers=5,
                      train_split=None, val_split=None, eval_batch_size=4)  # fmt: skip
    assert mini.run_cli("test", cfg, tmp_path)[0] == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    acc = {k[len("test/acc_") :]: v for k, v in metrics.items() if k.startswith("test/acc_")}
    assert metrics["test/acc"] == pytest.approx(0.5)
    assert acc == pytest.approx({
        "action": 1.0, "object": 0.5, "relation": 0.0,
        "structural_verify": 0.5, "structural_query": 1.0, "structural_compare": 0.0,
        "ans_type_binary": 1 / 3, "ans_type_open": 1.0,
        "reasoning_exists": 0.5, "reasoning_obj_rel": 1.0, "reasoning_sequencing": 0.5, "reasoning_rel_act": 0.0,
    })  # fmt: skip
