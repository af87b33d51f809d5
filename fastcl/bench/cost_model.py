"""Predicted GPU time of the loss from the kernels' SASS counts, calibrated on measured GPU runs.

Per kernel, over all (2N)^2 logits: T = max(tensor time, MUFU time, issue time) / efficiency,
  tensor = tensor flops / the bf16 matrix rate measured on these GPUs (790 TFLOP/s, cuBLAS),
  MUFU   = MUFU thread-ops / (SMs x 16 per clock),
  issue  = warp instructions / (SMs x 4 schedulers per clock);
a pass adds its kernels and a fixed launch overhead. The efficiency and the overheads are fitted
to the runs in benchmarks/data/cuda_runs.csv, using the SASS counts of the kernels those runs
measured (benchmarks/data/sass_counts_<commit>.json, made by `--calibrate <commit>`).

`python -m fastcl.bench.calibrate e6af950` recompiles that commit's kernels, stores their counts
and prints the fit; `python -m fastcl.bench.sass` prints the prediction for this checkout."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .cubins import REPO

DATA = REPO / "benchmarks" / "data"
RUNS = DATA / "cuda_runs.csv"
SIZES = (4096, 16384, 1_048_576)


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    clock_hz: float
    matrix_flops: float  # dense bf16/fp16, as measured with cuBLAS on these machines


H200 = Gpu("NVIDIA H200", 132, 1.98e9, 790e12)


def core_seconds(per_logit: dict[str, float], rows: int, gpu: Gpu = H200) -> tuple[float, str]:
    """One kernel over rows x rows logits at 100% efficiency, and the bound that sets it."""
    logits = float(rows) * rows
    times = {
        "tensor": per_logit["tensor_flops"] * logits / gpu.matrix_flops,
        "mufu": per_logit["mufu"] * logits / (gpu.sms * 16 * gpu.clock_hz),
        "issue": per_logit["all"] / 32 * logits / (gpu.sms * 4 * gpu.clock_hz),
    }
    bound = max(times, key=times.get)
    return times[bound], bound


def pass_core(
    counts: dict[str, dict[str, dict]], dtype: str, pass_: str, rows: int
) -> tuple[float, list[str]]:
    """Sum over the kernels of a pass ("fwd", "fwd+bwd", or "clip": CLIP's two directions over
    rows x rows pairs, two forwards and two passes of the q = k backward kernel, which adds G's
    transposed term the same way); counts[dtype][role] = per-logit dict."""
    roles = ["forward"] + (["backward"] if pass_ != "fwd" else [])
    total, bounds = 0.0, []
    for role in roles:
        for per_logit in counts[dtype][role]:
            t, b = core_seconds(per_logit, rows)
            total += t
            bounds.append(b)
    return (2 * total if pass_ == "clip" else total), bounds


@dataclass
class Calibration:
    efficiency: float
    overhead_s: dict[str, float]  # per pass
    residuals: list[tuple[dict, float]]  # (run, predicted / measured)
    commit: str

    def predict(self, counts, dtype: str, pass_: str, rows: int) -> tuple[float, list[str]]:
        core, bounds = pass_core(counts, dtype, pass_, rows)
        overhead = 2 * self.overhead_s.get("fwd+bwd", 0.0) if pass_ == "clip" else self.overhead_s.get(pass_, 0.0)
        return core / self.efficiency + overhead, bounds


def load_runs(path: Path = RUNS) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for r in rows:
        r["rows"], r["D"], r["fastcl_ms"] = int(r["rows"]), int(r["D"]), float(r["fastcl_ms"])
    return rows


def load_counts(commit: str) -> dict | None:
    path = DATA / f"sass_counts_{commit}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fit(runs: list[dict] | None = None, min_rows: int = 4096) -> Calibration | None:
    """Efficiency and per-pass overheads minimising the squared log error over the runs whose
    kernels have SASS counts (rows >= min_rows: smaller ones are launch overhead only).

    NT-Xent's passes only: a "clip" run (CLIP's loss, rows = B) is left out. Its prediction stands on
    an assumption (the pair backward issues what two q = k backwards do) and borrows the fwd+bwd
    overhead twice, so fitting to it would bend the NT-Xent calibration to that assumption; the
    clip runs are what checks it (report() shows them beside the prediction)."""
    runs = runs if runs is not None else load_runs()
    runs = [r for r in runs if r["rows"] >= min_rows and r["pass"] in ("fwd", "fwd+bwd")]
    by_commit = {c: load_counts(c) for c in {r["commit"] for r in runs}}
    runs = [r for r in runs if by_commit.get(r["commit"]) and r["D"] == by_commit[r["commit"]]["D"]]
    if not runs:
        return None
    commit = runs[0]["commit"]
    cores = [pass_core(by_commit[r["commit"]]["counts"], r["dtype"], r["pass"], r["rows"])[0] for r in runs]
    best = None
    for step in range(1, 301):
        eff = step / 200  # 0.005 .. 1.5
        overhead = {}
        for pass_ in {r["pass"] for r in runs}:
            gaps = [r["fastcl_ms"] / 1e3 - c / eff for r, c in zip(runs, cores) if r["pass"] == pass_]
            overhead[pass_] = max(0.0, sorted(gaps)[len(gaps) // 2])  # the median gap: robust to one outlier
        err = 0.0
        for r, c in zip(runs, cores):
            pred = c / eff + overhead[r["pass"]]
            err += math.log(max(pred, 1e-9) / (r["fastcl_ms"] / 1e3)) ** 2
        if best is None or err < best[0]:
            best = (err, eff, overhead)
    _, eff, overhead = best
    resid = [(r, (c / eff + overhead[r["pass"]]) / (r["fastcl_ms"] / 1e3)) for r, c in zip(runs, cores)]
    return Calibration(eff, overhead, resid, commit)


def counts_from_reports(reports, D: int) -> dict:
    """counts[dtype][role] = [per-logit dict of each kernel], sm_90 kernels only."""
    from .kernel_traits import DTYPE_NAMES

    chosen: dict = {}
    for r in reports:
        if r.main is None or r.arch.rstrip("a") != "90" or not r.traits.used_for(D, r.dtype, r.name):
            continue
        chosen.setdefault((DTYPE_NAMES[r.dtype], r.traits.pass_), []).append(r)
    out: dict = {}
    for (dtype, role), found in chosen.items():
        top = max(r.traits.priority for r in found)
        roles = out.setdefault(dtype, {"forward": [], "backward": []})
        roles[role] += [r.per_logit(D) for r in found if r.traits.priority == top]
    return out


def counts_summary(reports, D: int, commit: str) -> dict:
    """The content of benchmarks/data/sass_counts_<commit>.json: what the fit reads for the runs of
    `commit`, and each sm_90 loss kernel's report at D."""
    return {
        "commit": commit,
        "D": D,
        "arch": "90",
        "counts": counts_from_reports(reports, D),
        "kernels": {r.name: r.summary(D) for r in reports if r.arch.rstrip("a") == "90"},
    }


def report(reports, D: int) -> dict:
    """The prediction for these kernels at SIZES, next to the last measured runs."""
    counts = counts_from_reports(reports, D)
    cal = fit()
    lines, rows = [], []
    if cal is None:
        return {"text": "cost model: no calibration data (benchmarks/data from a checkout)", "rows": []}
    lines.append(
        f"Cost model (calibrated on the H200 runs of {cal.commit}: efficiency {cal.efficiency:.3f}, "
        f"overhead "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(cal.overhead_s.items()))
        + "; fit residuals (predicted / measured) "
        + ", ".join(f"{r['dtype'][:4]} {r['pass']} {r['rows']}: {q:.2f}" for r, q in cal.residuals)
        + ")"
    )
    measured = {(r["dtype"], r["pass"], r["rows"], r["D"]): r for r in load_runs()}
    lines.append("")
    lines.append(
        "| dtype | pass | 2N | D | instr/logit | U | bound | predicted ms | last measured ms (commit) |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---|---:|---|")
    for dtype in sorted(counts):
        for pass_ in ("fwd", "fwd+bwd", "clip"):
            kernels = counts[dtype]["forward"] + (counts[dtype]["backward"] if pass_ != "fwd" else [])
            twice = 2 if pass_ == "clip" else 1
            instr = twice * sum(k["all"] for k in kernels)
            units = twice * sum(k["matmul_units"] for k in kernels)
            for n in SIZES:
                t, bounds = cal.predict(counts, dtype, pass_, n)
                m = measured.get((dtype, pass_, n, D))
                seen = f"{m['fastcl_ms']:,.1f} ({m['commit']})" if m else "-"
                lines.append(
                    f"| {dtype} | {pass_} | {n:,} | {D} | {instr:.1f} | {units:.2f} | "
                    f"{'/'.join(sorted(set(bounds)))} | {t * 1e3:,.2f} | {seen} |"
                )
                rows.append(
                    {
                        "dtype": dtype,
                        "pass": pass_,
                        "rows": n,
                        "D": D,
                        "instr_per_logit": instr,
                        "matmul_units": units,
                        "predicted_ms": t * 1e3,
                        "measured_ms": m["fastcl_ms"] if m else None,
                    }
                )
    return {"text": "\n".join(lines), "rows": rows}
