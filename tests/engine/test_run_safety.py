"""Never lose a run (issue 24): a torn metrics.jsonl, a run folder started again without --resume,
a full disk at a save or a metrics append, bad counts and --out folders, a checkpoint of the other
trainer, file modes. Each ends in an exact resume or one clear message, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid

import pytest
import torch

from fastcl.__main__ import main
from fastcl.engine import checkpoint, files
from fastcl.engine.export import write_embeddings
from fastcl.engine.metrics import MetricsLog, read_records
from fastcl.simclr import SimCLRConfig, SimCLRTrainer
from helpers import logged_records

pytest.importorskip("torchvision")

ARGS = ["--data", "fake", "--arch", "small_cnn", "--batch-size", "128", "--epochs", "2", "--proj-hidden",
        "64", "--proj-dim", "32", "--optimizer", "sgd", "--lr", "0.05", "--log-every", "1", "--device", "cpu",
        "--knn-k", "20", "--no-progress"]


def _config(tmp_path, name="run", **kw):
    base = dict(data="fake", out=str(tmp_path / name), arch="small_cnn", batch_size=128, epochs=2,
                proj_hidden=64, proj_dim=32, optimizer="sgd", lr=0.05, log_every=1, device="cpu", knn_k=20,
                progress=False)
    return SimCLRConfig(**{**base, **kw})


def _steps(out):
    return [r["step"] for r in logged_records(out)]


# -- metrics.jsonl: a torn last line, a corrupt line, a resume that truncates -------------------------
def test_a_torn_last_line_is_dropped_with_a_warning_and_any_other_bad_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n'
                    '{"kind": "step", "step": 3, "los')
    with pytest.warns(UserWarning, match=r"metrics.jsonl, line 3: an incomplete last record"):
        assert [r["step"] for r in read_records(str(path))] == [1, 2]
    path.write_text('{"kind": "step", "step": 1}\n{"kind": "st\n{"kind": "step", "step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
        read_records(str(path))


def test_plot_reads_past_a_torn_last_line_and_names_a_corrupt_one(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    step = '{"kind": "step", "step": %d, "epoch": 0, "loss": 1.5}\n'
    (tmp_path / "metrics.jsonl").write_text(step % 1 + step % 2 + '{"kind": "st')
    with pytest.warns(UserWarning, match="line 3"):
        assert main(["plot", str(tmp_path)]) == 0
    (tmp_path / "metrics.jsonl").write_text('{"kind": "st\n' + step % 2)
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl, line 1: not a JSON record" in capsys.readouterr().err


def test_a_resume_truncates_the_log_to_its_checkpoint_past_a_torn_line(tmp_path):
    """Killed at step 5 during a metrics append, with the last save at step 3: the resumed run logs
    each step once, and its losses are the uninterrupted run's."""
    full = _config(tmp_path, "full", max_steps=8)
    SimCLRTrainer(full).train()
    cut = tmp_path / "cut"
    SimCLRTrainer(_config(tmp_path, "cut", max_steps=5, save_every_steps=3, keep_checkpoints=3)).train()
    shutil.copy(cut / "checkpoints" / "step-00000003.pt", cut / "last.pt")
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "step": 6, "epo')
    with pytest.warns(UserWarning, match="incomplete last record"):
        SimCLRTrainer(_config(tmp_path, "cut", max_steps=8, resume="yes")).train()
    assert _steps(cut) == list(range(1, 9))
    losses = [[r["loss"] for r in logged_records(p)] for p in (tmp_path / "full", cut)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


# -- a run folder is never overwritten by accident -----------------------------------------------------
def test_starting_again_in_a_run_folder_is_refused_until_told_resume_or_overwrite(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["simclr", *ARGS, "--out", out, "--max-steps", "2"]) == 0
    assert main(["simclr", *ARGS, "--out", out, "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert checkpoint.load(os.path.join(out, "last.pt"))["global_step"] == 2 and _steps(out) == [1, 2]
    assert main(["simclr", *ARGS, "--out", out, "--max-steps", "3", "--resume"]) == 0
    assert "resumed from step 2 (epoch 0)" in capsys.readouterr().err and _steps(out) == [1, 2, 3]
    assert main(["simclr", *ARGS, "--out", out, "--max-steps", "1", "--overwrite"]) == 0
    assert checkpoint.load(os.path.join(out, "last.pt"))["global_step"] == 1 and _steps(out) == [1]
    assert main(["simclr", *ARGS, "--out", out, "--overwrite", "--resume"]) == 2
    assert "exclude each other" in capsys.readouterr().err


# -- clear messages: --out, counts, the other trainer's checkpoint -----------------------------------
def test_an_out_that_is_a_file_or_cannot_be_written_is_a_message(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert main(["simclr", *ARGS, "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(os, "makedirs", read_only)
    assert main(["simclr", *ARGS, "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the folder (Read-only file system)" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, match", [
    (["simclr", "--log-every", "0"], "--log-every: must be >= 1, got 0"),
    (["simclr", "--max-steps", "-3"], "--max-steps: must be >= 1, got -3"),
    (["simcse", "--log-every", "0"], "--log-every: must be >= 1, got 0"),
    (["embed", "--model", "tiny", "--out", "x.npy", "--batch-size", "0"], "--batch-size: must be >= 1"),
])
def test_zero_and_negative_counts_are_refused_on_the_command_line(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(argv)
    assert exit_code.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("kw, match", [(dict(log_every=0), "log_every must be >= 1, got 0"),
                                       (dict(max_steps=-3), "max_steps must be >= 1, got -3"),
                                       (dict(knn_k=0), "knn_k must be >= 1")])
def test_zero_and_negative_counts_are_refused_in_python(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        SimCLRTrainer(_config(tmp_path, **kw))


def test_a_checkpoint_of_the_other_trainer_is_refused_by_name(tmp_path):
    out = tmp_path / "run"
    checkpoint.save_atomic({"config": {"model": "tiny", "train_file": "builtin"}, "global_step": 3},
                           str(out / "last.pt"))  # SimCSE's, as saved before checkpoints named their trainer
    with pytest.raises(ValueError, match="checkpoint of the simcse trainer .*fastcl simcse --resume"):
        SimCLRTrainer(_config(tmp_path, resume="yes"))
    SimCLRTrainer(_config(tmp_path, "own", max_steps=1)).train()
    assert checkpoint.load(str(tmp_path / "own" / "last.pt"))["trainer"] == "simclr"


# -- a full disk -------------------------------------------------------------------------------------
def _disk_full_after(nbytes):
    def save(obj, f):
        f.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_a_full_disk_at_a_save_keeps_the_checkpoint_and_ends_in_one_message(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert main(["simclr", *ARGS, "--out", out, "--max-steps", "1"]) == 0
    monkeypatch.setattr(torch, "save", _disk_full_after(1000))
    assert main(["simclr", *ARGS, "--out", out, "--max-steps", "2", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"fastcl simclr: error: could not write {out}/last.pt after 1,000 bytes: No space")
    assert "bytes free there" in err and "previous checkpoint there is kept" in err
    monkeypatch.undo()
    assert checkpoint.load(os.path.join(out, "last.pt"))["global_step"] == 1
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_a_failed_metrics_append_leaves_no_torn_line_and_names_the_file(tmp_path, monkeypatch):
    log = MetricsLog(str(tmp_path), enabled=True)
    log.log(kind="step", step=1)
    real = files._WholeWrites.write

    def half_then_full(self, data):
        real(self, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files._WholeWrites, "write", half_then_full)
    with pytest.raises(files.WriteFailed, match=r"metrics.jsonl after 10 bytes: No space .*the run stopped"):
        log.log(kind="step", step=2)
    monkeypatch.undo()
    assert [r["step"] for r in read_records(log.path)] == [1]


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_keeps_the_previous_checkpoint(small_tmpfs):
    path = str(small_tmpfs / "last.pt")
    checkpoint.save_atomic({"step": 1}, path)
    wanted = r"last.pt after [\d,]+ bytes: No space left on device; [\d,]+ bytes free there"
    with pytest.raises(files.WriteFailed, match=wanted):
        checkpoint.save_atomic({"step": 2, "w": torch.zeros(200_000)}, path)
    assert checkpoint.load(path) == {"step": 1} and os.listdir(small_tmpfs) == ["last.pt"]
    log = MetricsLog(str(small_tmpfs), enabled=True)
    fd = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as full:  # fill what is left
        while True:
            os.write(fd, b"x" * 4096)
    os.close(fd)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(files.WriteFailed, match="metrics.jsonl"):
        log.log(kind="step", step=1, note="x" * 10_000)


# -- file modes -------------------------------------------------------------------------------------
def test_outputs_get_the_mode_of_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        checkpoint.save_atomic({"step": 1}, str(tmp_path / "last.pt"))
        write_embeddings(str(tmp_path / "e.npy"), torch.ones(2, 3), [{"id": 0}, {"id": 1}])
    finally:
        os.umask(old)
    for name in ("last.pt", "e.npy", "e.ids.jsonl"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o640, name
    assert json.loads((tmp_path / "e.ids.jsonl").read_text().splitlines()[1]) == {"id": 1}


# -- resume checks the data it trains on ----------------------------------------------------------
def test_resume_refuses_other_data_saying_what_changed(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from fastcl.simclr import digits

    config = _config(tmp_path, data="digits", max_steps=1, batch_size=64)
    SimCLRTrainer(config).train()
    state = checkpoint.load(os.path.join(config.out, "last.pt"))
    assert state["trainer"] == "simclr" and state["data"] == dict(source="--data digits", data="digits",
                                                                  version=digits.VERSION)
    monkeypatch.setattr(digits, "VERSION", "2")  # the built-in scenes rendered otherwise
    with pytest.raises(ValueError, match=r"last.pt was trained on other data than --data digits has now "
                                         r"\(version '1' then, '2' now\)"):
        SimCLRTrainer(_config(tmp_path, data="digits", max_steps=2, batch_size=64, resume="yes"))


def test_check_data_names_each_change_and_skips_older_checkpoints():
    from fastcl.engine.resume import check_data

    old = dict(source="--data folder:x", data="folder", files=10, bytes=4000, sha256="a" * 64)
    check_data("last.pt", None, old)  # a checkpoint from before fingerprints: not checked
    check_data("last.pt", old, dict(old, source="--data folder:y"))  # the same files elsewhere
    with pytest.raises(ValueError, match=r"files 10 then, 12 now; bytes 4,000 then, 5,000 now; "
                                         r"sha256 aaaaaaaaaaaa\.\.\. then, bbbbbbbbbbbb\.\.\. now"):
        check_data("last.pt", old, dict(old, files=12, bytes=5000, sha256="b" * 64))
