"""The installed build: `python -m fastcl info`, and the JIT path building the same sources."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastcl


def test_build_info_reports_backends():
    info = fastcl.build_info()
    assert info["source"] in ("aot", "jit")
    assert "cpu" in info["backends"]
    assert info["version"] == fastcl.__version__
    assert info["cpu_isa"]


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "fastcl", "info"], capture_output=True, text=True, check=True)
    assert "fastcl" in out.stdout and "backends" in out.stdout and "cpu" in out.stdout


@pytest.mark.slow
def test_jit_build_matches_aot(tmp_path):
    """FASTCL_JIT=1 builds the sources with torch.utils.cpp_extension.load and gives the same loss."""
    env = dict(os.environ, FASTCL_JIT="1", FASTCL_STRICT="1", FASTCL_FORCE_CUDA="0",
               FASTCL_JIT_CACHE=str(tmp_path / "cache"))
    code = ("import torch, fastcl; torch.manual_seed(0); a, b = torch.randn(2, 9, 5).unbind();"
            "print(fastcl.build_info()['source'], float(fastcl.NTXentLoss(0.3)(a, b)))")
    jit = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    assert jit.returncode == 0, jit.stderr[-3000:]
    aot = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    source, value = jit.stdout.split()
    assert source == "jit"
    assert float(value) == pytest.approx(float(aot.stdout.split()[1]), rel=1e-6)


def test_speed_command_prints_a_table():
    out = subprocess.run([sys.executable, "-m", "fastcl", "speed", "--sizes", "64", "128", "--repeats", "1"],
                         capture_output=True, text=True, check=True)
    rows = [line for line in out.stdout.splitlines() if line.strip().startswith(("64 ", "128 "))]
    assert len(rows) == 2, out.stdout
    # The last two columns are the loss and gradient differences against the hand-written loss.
    for row in rows:
        loss_diff, grad_diff = (float(cell) for cell in row.split("|")[-2:])
        assert loss_diff < 1e-4 and grad_diff < 1e-4


@pytest.mark.slow
def test_failed_jit_build_falls_back_or_fails_strictly(tmp_path):
    """A JIT build that cannot compile warns once and runs the pure-PyTorch path; with
    FASTCL_STRICT=1 it is an error instead."""
    env = dict(os.environ, FASTCL_JIT="1", FASTCL_FORCE_CUDA="0", FASTCL_JIT_CACHE=str(tmp_path / "cache"),
               CXX="/bin/false", CC="/bin/false")
    env.pop("FASTCL_STRICT", None)
    code = ("import warnings, torch\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import fastcl, fastcl.bench.baselines\n"
            "    a, b = torch.randn(2, 6, 4).unbind()\n"
            "    loss = fastcl.NTXentLoss(0.3)(a, b)\n"
            "print(fastcl.build_info()['source'], sum('pure-PyTorch path' in str(w.message) for w in caught),"
            " float(loss - fastcl.bench.baselines.nt_xent_naive(a, b, 0.3)))\n")
    fallback = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    source, warnings_seen, diff = fallback.stdout.split()
    assert source == "python" and int(warnings_seen) == 1 and abs(float(diff)) < 1e-5
    strict = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            env=dict(env, FASTCL_STRICT="1"))
    assert strict.returncode != 0 and "FASTCL_STRICT=1" in strict.stderr


def test_build_flags_survive_nvcc(monkeypatch):
    """nvcc splits option values at commas: no define may contain one (the default arch list has two entries)."""
    from fastcl import _build

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    args, _ = _build.compile_args(with_cuda=True, version="1.2.3")
    defines = [flag for flag in args["nvcc"] if flag.startswith("-D")]
    assert "-DFASTCL_CUDA_ARCH_LIST_RAW=8.0/9.0+PTX" in defines
    assert not any("," in flag for flag in args["nvcc"])
    assert not any("arch" in flag.lower() and not flag.startswith("-DFASTCL_CUDA_ARCH") for flag in args["nvcc"])
