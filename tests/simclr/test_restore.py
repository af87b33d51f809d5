"""A SimCLR run read back (fastcl.simclr.restore): every command on a run (knn, linear-probe,
neighbours, label-efficiency, embed) checks the checkpoint the same way, with the file named, and
rebuilds the same model."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from fastcl.engine.checkpoint import UnsafeCheckpoint
from fastcl.simclr import SimCLRConfig, evaluate, label_efficiency, neighbours, restore, retrieval


def _save_run(path, drop: str | None = None) -> dict:
    """A SimCLR checkpoint as the trainer writes one (weights and config dict), without training."""
    config = dataclasses.asdict(SimCLRConfig(data="fake", arch="small_cnn", proj_hidden=16, proj_dim=8, seed=3))
    state = {"model": restore.build_model(config).state_dict(), "config": config}
    if drop:
        config.pop(drop)
    torch.save(state, path)
    return state


READERS = {
    "load_encoder": lambda p: evaluate.load_encoder(p, device="cpu"),
    "linear-probe": lambda p: evaluate.evaluate_checkpoint(p, method="linear", device="cpu"),
    "knn": lambda p: retrieval.retrieval_report(p, device="cpu"),
    "embed": lambda p: retrieval.embed_checkpoint(p, device="cpu"),
    "neighbours": lambda p: neighbours.write_neighbours(p, out=p + ".png", device="cpu"),
    "label-efficiency": lambda p: label_efficiency.run(p, budgets=(1,), draws=1, steps=1, device="cpu",
                                                       echo=lambda *_: None),
}


class _Code:
    pass


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("case,match", [
    ("folder", "is a folder, not a SimCLR checkpoint"),
    ("not_simclr", "is not a SimCLR checkpoint (no model and SimCLR config in it)"),
    ("no_proj_dim", "its SimCLR config lacks proj_dim"),
    ("text", "is not a checkpoint fastcl can read"),
])
def test_every_command_refuses_the_same_files(tmp_path, reader, case, match):
    if reader == "neighbours":
        pytest.importorskip("matplotlib")
    path = tmp_path / "run.pt"
    if case == "folder":
        path = tmp_path
    elif case == "not_simclr":
        torch.save({"weights": torch.zeros(2)}, path)
    elif case == "no_proj_dim":
        _save_run(path, drop="proj_dim")
    else:
        path.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="^" + re.escape(repr(str(path))) + ".*" + re.escape(match)):
        READERS[reader](str(path))


def test_code_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    torch.save({"model": {}, "config": {"arch": "small_cnn"}, "extra": _Code()}, path)
    with pytest.raises(UnsafeCheckpoint, match=re.escape(repr(str(path)))):
        evaluate.load_encoder(str(path), device="cpu")


def test_the_encoder_is_the_runs_and_the_random_state_is_left_alone(tmp_path):
    saved = _save_run(tmp_path / "run.pt")
    torch.manual_seed(11)
    want = torch.rand(4)
    torch.manual_seed(11)
    encoder, config = evaluate.load_encoder(str(tmp_path / "run.pt"), device="cpu")
    assert torch.equal(torch.rand(4), want)
    assert config == saved["config"]
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, saved["model"]["encoder." + name]), name
    again = restore.build_model(config, restore.load_run(str(tmp_path / "run.pt")))
    assert all(torch.equal(a, b) for a, b in zip(again.encoder.state_dict().values(), encoder.state_dict().values()))
