"""The drop-ins under 2 gloo processes: each rank's loss and parameter gradients (and logit-scale
gradient) equal those of the original class in the same setup, for open_clip's local_loss x
gather_with_grad, lightly's gather_distributed (with and without a memory bank) and
sentence-transformers' gather_across_devices (with a hard negative, several directions)."""

from __future__ import annotations

import itertools
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

open_clip = pytest.importorskip("open_clip")
lightly_loss = pytest.importorskip("lightly.loss")
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

D_IN, D = 7, 5
CLIP_CASES = list(itertools.product([False, True], [False, True]))  # (local_loss, gather_with_grad)
LIGHTLY_CASES = [0, (12, D)]
ST_CASES = [dict(), dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")),
            dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                 hardness_mode="all_negatives", hardness_strength=3.0)]


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(D_IN, D), torch.nn.Parameter(torch.tensor(2.3))


def _grads(loss, params):
    return [g.detach().clone() for g in torch.autograd.grad(loss, params)]


def _worker(rank, world, init_file, out_dir):
    from fastcl.integrations import lightly as fl
    from fastcl.integrations import open_clip as fo
    from fastcl.integrations import sentence_transformers as fs

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    g = torch.Generator().manual_seed(100 + rank)
    x1, x2 = torch.randn(6, D_IN, generator=g), torch.randn(6, D_IN, generator=g)
    results = {}
    for local_loss, with_grad in CLIP_CASES:
        for name, cls in (("original", open_clip.ClipLoss), ("fastcl", fo.ClipLoss)):
            layer, log_scale = _model()
            params = [layer.weight, layer.bias, log_scale]
            image = torch.nn.functional.normalize(layer(x1), dim=1)
            text = torch.nn.functional.normalize(layer(x2), dim=1)
            loss = cls(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)(
                image, text, log_scale.exp())
            results[("clip", local_loss, with_grad, name)] = (float(loss), _grads(loss, params))
    for bank in LIGHTLY_CASES:
        for name, cls in (("original", lightly_loss.NTXentLoss), ("fastcl", fl.NTXentLoss)):
            torch.manual_seed(1)
            criterion = cls(temperature=0.4, memory_bank_size=bank, gather_distributed=True)
            layer, _ = _model()
            steps = []
            for step in range(3):  # with a bank: the bank after each step holds both ranks' out1
                loss = criterion(layer(x1 + step), layer(x2 - step))
                steps.append((float(loss), _grads(loss, [layer.weight, layer.bias])))
            results[("lightly", bank, name)] = steps
    x3 = torch.randn(6, D_IN, generator=g)
    for i, kw in enumerate(ST_CASES):
        for name, cls in (("original", st_losses.MultipleNegativesRankingLoss),
                          ("fastcl", fs.MultipleNegativesRankingLoss)):
            layer, _ = _model()
            criterion = cls(None, scale=10.0, gather_across_devices=True, **kw)
            loss = criterion.compute_loss_from_embeddings([layer(x1), layer(x2), layer(x3)], None)
            results[("st", i, name)] = (float(loss), _grads(loss, [layer.weight, layer.bias]))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_drop_ins_match_the_originals_under_two_processes(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for local_loss, with_grad in CLIP_CASES:
            (want, want_grads), (got, got_grads) = (results[("clip", local_loss, with_grad, n)]
                                                    for n in ("original", "fastcl"))
            case = f"rank {rank} local_loss={local_loss} gather_with_grad={with_grad}"
            assert got == pytest.approx(want, rel=1e-5), case
            for g, w in zip(got_grads, want_grads):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=case)
        for i, kw in enumerate(ST_CASES):
            (want, want_grads), (got, got_grads) = (results[("st", i, n)] for n in ("original", "fastcl"))
            assert got == pytest.approx(want, rel=1e-5), f"rank {rank} {kw}"
            for g, w in zip(got_grads, want_grads):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=f"rank {rank} {kw}")
        for bank in LIGHTLY_CASES:
            for (want, want_grads), (got, got_grads) in zip(results[("lightly", bank, "original")],
                                                            results[("lightly", bank, "fastcl")]):
                assert got == pytest.approx(want, rel=1e-5), f"rank {rank} bank {bank}"
                for g, w in zip(got_grads, want_grads):
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
