"""Never lose a SimCSE run (issue 24): the last step logged however short the run, a run folder not
replaced unasked, a SimCLR checkpoint refused by name, the saved model with the user's umask, a train
file of one repeated sentence refused before training."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("transformers")

from fastcl.__main__ import main  # noqa: E402
from fastcl.engine import checkpoint  # noqa: E402
from fastcl.simcse import SimCSEConfig, SimCSETrainer  # noqa: E402
from fastcl.simcse.data import load_train_file  # noqa: E402
from helpers import logged_records  # noqa: E402


def _config(tmp_path, **kw):
    (tmp_path / "train.txt").write_text("\n".join(f"line {i} of a tiny corpus" for i in range(24)))
    base = dict(model="tiny", train_file=str(tmp_path / "train.txt"), out=str(tmp_path / "run"), batch_size=8,
                max_steps=2, progress=False, device="cpu")
    return SimCSEConfig(**{**base, **kw})


def test_a_run_shorter_than_log_every_logs_its_last_step_with_the_umask_and_is_not_replaced_unasked(tmp_path):
    old = os.umask(0o027)
    try:
        SimCSETrainer(_config(tmp_path, log_every=10)).train()
    finally:
        os.umask(old)
    out = tmp_path / "run"
    assert [r["step"] for r in logged_records(out)] == [2]
    for name in ("model.safetensors", "fastcl_simcse.json", "metrics.jsonl"):
        assert os.stat(out / name).st_mode & 0o777 == 0o640, name
    with pytest.raises(ValueError, match="already holds a run .*--resume.*--overwrite"):
        SimCSETrainer(_config(tmp_path, log_every=10))
    summary = SimCSETrainer(_config(tmp_path, max_steps=1, overwrite=True)).train()
    assert summary["steps"] == 1


def test_a_simclr_checkpoint_is_refused_by_name(tmp_path):
    checkpoint.save_atomic({"config": {"arch": "small_cnn", "data": "fake"}, "global_step": 3},
                           str(tmp_path / "run" / "last.pt"))  # saved before checkpoints named their trainer
    with pytest.raises(ValueError, match="checkpoint of the simclr trainer .*fastcl simclr --resume"):
        SimCSETrainer(_config(tmp_path, resume="yes"))


def test_resume_refuses_a_train_file_that_changed(tmp_path):
    """The issue's case: a train file shrunk from 24 to 5 lines before --resume used to go on (and
    export a "finished" model); now the resume is refused with the old and new size and hash."""
    config = _config(tmp_path, max_steps=1, save_every_steps=1)
    SimCSETrainer(config).train()
    state = checkpoint.load(str(tmp_path / "run" / "last.pt"))
    assert state["data"]["size"] == os.path.getsize(tmp_path / "train.txt")
    assert len(state["data"]["sha256"]) == 64
    SimCSETrainer(SimCSEConfig(**{**config.__dict__, "resume": "yes"}))  # unchanged: resumes
    (tmp_path / "train.txt").write_text("\n".join(f"line {i} of a tiny corpus" for i in range(5)))
    size = os.path.getsize(tmp_path / "train.txt")
    with pytest.raises(ValueError, match=rf"trained on other data than train file .*train.txt.*size "
                                         rf"{state['data']['size']:,} then, {size:,} now; sha256 "
                                         rf"{state['data']['sha256'][:12]}\.\.\. then, .* now.*--overwrite"):
        SimCSETrainer(SimCSEConfig(**{**config.__dict__, "resume": "yes"}))


@pytest.mark.parametrize("masking", [[], ["--no-mask-duplicates"]])
def test_a_train_file_of_one_repeated_sentence_is_refused_before_training(tmp_path, capsys, masking):
    """The issue's case: such a file trained (to loss 0, or with duplicate masking failed at the
    first batch with an error that named no file); now the data load refuses it, in one line that
    names the file, before a model is loaded or a run folder made."""
    train = tmp_path / "same.txt"
    train.write_text("the same sentence\n  the same sentence \n\n" + "the same sentence\n" * 30)
    out = tmp_path / "run"
    assert main(["simcse", "--model", "tiny", "--train-file", str(train), "--out", str(out), "--batch-size", "8",
                 "--max-steps", "2", "--no-progress", *masking]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fastcl simcse: error: train file {str(train)!r}: all 32 rows are the same sentence 'the same "
                   "sentence', so every other row of a batch is a copy and no sentence has an in-batch negative; "
                   "it needs at least 2 different rows")
    assert not out.exists()


def test_a_csv_of_one_repeated_row_is_refused_and_two_different_rows_are_not(tmp_path):
    nli = tmp_path / "nli.csv"
    nli.write_text("sent0,sent1,hard_neg\n" + "a cat sits,a cat is sitting,a dog runs\n" * 3)
    with pytest.raises(ValueError, match=r"nli.csv': all 3 rows are the same row \('a cat sits', 'a cat is "
                                         r"sitting', 'a dog runs'\)"):
        load_train_file(str(nli))
    nli.write_text("sent0,sent1\n" + "a cat sits,a cat is sitting\n" * 3 + "a cat sits,a cat rests\n")
    assert len(load_train_file(str(nli))) == 4
    (tmp_path / "two.txt").write_text("one sentence\n" * 5 + "another sentence\n")
    assert len(load_train_file(str(tmp_path / "two.txt"))) == 6
