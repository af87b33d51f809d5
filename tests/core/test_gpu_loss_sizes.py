"""benchmarks/gpu_loss_sizes.py, the GPU timing run of scripts/gpu_check.sh, as a CPU dry run: its
NT-Xent and CLIP rows, the losses they time, and the cuda_runs.csv rows the cost model's fit reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastcl.bench import cost_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gls():
    spec = importlib.util.spec_from_file_location("gpu_loss_sizes", REPO / "benchmarks" / "gpu_loss_sizes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakePredictor:
    """Stands in for the SASS analysis of the build (20 s here): a value that names its arguments."""

    def __init__(self, D, commit):
        self.D, self.error = D, None

    @staticmethod
    def value(pass_, rows, D):
        return rows + D / 1000 + {"fwd": 0.1, "fwd+bwd": 0.2, "clip": 0.3}[pass_]

    def predict(self, dtype, pass_, rows, D=None):
        return self.value(pass_, rows, self.D if D is None else D), "issue"

    def calibration(self):
        return None

    def sass_counts(self):
        return None


def open_clip_loss_fp64(a, b, scale):
    """open_clip's ClipLoss on normalised features, in fp64."""
    a, b = F.normalize(a.double(), dim=1), F.normalize(b.double(), dim=1)
    logits = scale * a @ b.T
    labels = torch.arange(a.shape[0])
    return float((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)


@pytest.fixture(scope="module")
def dry_run(gls, tmp_path_factory):
    out = tmp_path_factory.mktemp("loss-sizes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gls, "Predictor", FakePredictor)
        args = "--device cpu --dtype float32 --sizes 256 --impls naive,fastcl --repeats 1 --out"
        rc = gls.main(args.split() + [str(out)])
    return rc, json.loads((out / "loss-sizes.json").read_text()), (out / "loss-sizes.csv").read_text()


def test_dry_run_times_nt_xent_and_clip(dry_run):
    rc, result, _ = dry_run
    assert rc == 0
    got = {(r["impl"], r["pass"], r["rows"], r["D"]): r for r in result["rows"]}
    want = {(impl, p, 256, 128) for impl in ("naive", "fastcl") for p in ("fwd", "fwd+bwd")}
    want |= {(impl, "clip", 256, d) for impl in ("naive", "fastcl") for d in (128, 512)}
    assert set(got) == want
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in result["rows"]), result["rows"]
    assert all(r["finite_grads"] for r in result["rows"] if r["pass"] != "fwd")
    # NT-Xent first, then CLIP by D.
    assert [r["pass"] == "clip" for r in result["rows"]] == [False] * 4 + [True] * 4
    # Every fastcl row carries the cost model's prediction for its own pass, size and D.
    for (impl, p, rows, d), r in got.items():
        if impl == "fastcl":
            assert r["predicted_ms"] == FakePredictor.value(p, rows, d)
        else:
            assert "predicted_ms" not in r


@pytest.mark.parametrize("dim", [128, 512])
def test_clip_rows_time_open_clips_loss(dry_run, dim):
    """fastcl's CLIP row computes the naive row's loss, and that is open_clip's ClipLoss of the
    case's inputs (fp32 on the CPU: tight tolerances)."""
    _, result, _ = dry_run
    rows = {r["impl"]: r for r in result["rows"] if r["pass"] == "clip" and r["D"] == dim}
    scale = result["clip"]["scale"]
    gen = torch.Generator().manual_seed(256)  # the script's seed for the size
    a, b = (torch.randn(256, dim, generator=gen) for _ in range(2))
    want = open_clip_loss_fp64(a, b, scale)
    assert rows["naive"]["loss"] == pytest.approx(want, rel=1e-5)
    assert rows["fastcl"]["loss"] == pytest.approx(rows["naive"]["loss"], rel=1e-5)


def test_csv_rows_have_cuda_runs_format(dry_run, gls, tmp_path):
    _, _, text = dry_run
    header = next(line for line in cost_model.RUNS.read_text().splitlines() if not line.startswith("#"))
    assert text.splitlines()[0] == header == ",".join(gls.CSV_COLUMNS)
    path = tmp_path / "runs.csv"
    path.write_text(text)
    runs = cost_model.load_runs(path)
    assert sorted((r["pass"], r["rows"], r["D"]) for r in runs) == [
        ("clip", 256, 128),
        ("clip", 256, 512),
        ("fwd", 256, 128),
        ("fwd+bwd", 256, 128),
    ]
    assert all(r["naive_ms"] and r["fastcl_ms"] > 0 and r["dtype"] == "float32" for r in runs)


def test_fit_leaves_clip_runs_out():
    runs = cost_model.load_runs()
    cal = cost_model.fit(runs)
    if cal is None:
        pytest.skip("no calibration data in benchmarks/data")
    # A clip run of the calibrated commit, 100x off the model: the fit does not move.
    counts = cost_model.load_counts(cal.commit)["counts"]
    dtype = next(iter(counts))
    clip = {**runs[-1], "commit": cal.commit, "dtype": dtype, "pass": "clip", "rows": 16384, "D": 128}
    clip["fastcl_ms"] = 100 * cal.predict(counts, dtype, "clip", 16384)[0] * 1e3
    with_clip = cost_model.fit(runs + [clip])
    assert (with_clip.efficiency, with_clip.overhead_s) == (cal.efficiency, cal.overhead_s)
    assert len(with_clip.residuals) == len(cal.residuals)
    # What the clip rows are checked against: two directions, each a forward + backward.
    assert cal.predict(counts, dtype, "clip", 16384)[0] == pytest.approx(
        2 * cal.predict(counts, dtype, "fwd+bwd", 16384)[0]
    )


def test_clip_cases(gls):
    assert gls._clip_cases("4096,16384x512") == [(4096, None), (16384, 512)]
    assert gls._clip_cases("none") == [] and gls._clip_cases("") == []
    gpu = gls.argparse.Namespace(clip=None, device="cuda", dim=128, sizes=[4096])
    assert gls.clip_schedule(gpu) == [(4096, 128), (16384, 128), (65536, 128), (16384, 512)]
    given = gls.argparse.Namespace(clip=[(64, None), (32, 256)], device="cuda", dim=128, sizes=[4096])
    assert gls.clip_schedule(given) == [(64, 128), (32, 256)]
