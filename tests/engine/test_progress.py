"""A progress line every few seconds on stderr for the long evaluation commands (issue 24: `knn`,
`neighbours` and `sts-eval` printed nothing for 20-30 s), off with --no-progress."""

from __future__ import annotations

import re
import time

import pytest

from fastcl.__main__ import main
from fastcl.engine import progress


def test_heartbeat_says_what_and_how_far_until_the_block_ends(capsys):
    with progress.heartbeat("knn", every=0.02):
        progress.note("encoding the training images")
        progress.count(512, 1024)
        time.sleep(0.2)
    err = capsys.readouterr().err
    assert re.search(r"^fastcl knn: encoding the training images: 512 / 1,024 \(\d+ s\)$", err, re.M)
    time.sleep(0.1)
    assert capsys.readouterr().err == ""  # the thread stopped with the block
    with progress.heartbeat("knn", enabled=False, every=0.02):
        progress.note("working")
        time.sleep(0.1)
    assert capsys.readouterr().err == ""


@pytest.fixture
def often(monkeypatch):
    monkeypatch.setattr(progress, "EVERY", 0.01)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("torchvision")
    from fastcl.simclr import SimCLRConfig, SimCLRTrainer

    out = tmp_path_factory.mktemp("run")
    SimCLRTrainer(SimCLRConfig(data="fake", out=str(out), arch="small_cnn", batch_size=64, epochs=1,
                               max_steps=1, proj_hidden=64, proj_dim=32, device="cpu",
                               progress=False)).train()
    return out


@pytest.mark.parametrize("command,extra", [
    ("knn", []), ("neighbours", []),
    ("label-efficiency", ["--labels-per-class", "1", "--draws", "1", "--steps", "1"])])
def test_simclr_commands_report_progress_on_stderr(run, often, capsys, command, extra):
    args = [command, "--checkpoint", str(run / "last.pt"), "--device", "cpu", *extra]
    if command != "knn":
        args += ["--out", str(run / (f"{command}.png" if command == "neighbours" else f"{command}.json"))]
    assert main(args) == 0
    captured = capsys.readouterr()
    line = rf"^fastcl {command}: .*encoding the .*images.*\(\d+ s\)$"
    assert re.search(line, captured.err, re.M), captured.err
    assert "fastcl " + command + ":" not in captured.out
    assert main([*args, "--no-progress"]) == 0
    assert f"fastcl {command}:" not in capsys.readouterr().err


def test_sts_eval_reports_progress_on_stderr(tmp_path, often, capsys):
    pytest.importorskip("transformers")
    sts = tmp_path / "sts.tsv"
    sts.write_text("".join(f"a sentence {i}\tanother one {i}\t{i % 5}\n" for i in range(40)))
    args = ["sts-eval", "--model", "tiny", "--pooler", "avg", "--sts-file", str(sts), "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    line = r"^fastcl sts-eval: (loading tiny|encoding the pairs of .*sts.tsv.*) \(\d+ s\)$"
    assert re.search(line, err, re.M), err
    assert main([*args, "--no-progress"]) == 0
    assert "fastcl sts-eval:" not in capsys.readouterr().err
