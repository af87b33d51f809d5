"""`python -m fastcl.bench.calibrate COMMIT`: the SASS counts of the kernels a GPU run measured, for the
cost model's fit (fastcl/bench/cost_model.py). COMMIT's csrc is compiled device-only for sm_90 from
`git archive`, and its loss kernels' per-logit counts go to benchmarks/data/sass_counts_COMMIT.json;
then the fit over every run in benchmarks/data/cuda_runs.csv that has counts is printed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import sass
from .cost_model import DATA, REPO, counts_summary, fit


def calibrate(commit: str, D: int = 128) -> Path:
    """Compiles `commit`'s CUDA kernels for sm_90 and stores their per-logit counts for the fit."""
    with tempfile.TemporaryDirectory(prefix="fastcl-ref-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        csrc = next(p for p in (Path(tmp) / "fastcl" / "csrc", Path(tmp) / "csrc") if p.exists())
        files, ptxas = sass.cb.compile_cubins(
            "90", csrc, workdir=REPO / "build" / "sass" / f"ref-{commit}", pattern="contrastive*.cu"
        )
        reports = sass.analyse(files, ptxas)
    out = DATA / f"sass_counts_{commit}.json"
    DATA.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(counts_summary(reports, D, commit), indent=1, default=str) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcl.bench.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("commit", nargs="?", help="store the SASS counts of the kernels COMMIT measured")
    args = p.parse_args(argv)
    if args.commit:
        print("wrote", calibrate(args.commit))
    cal = fit()
    if cal is None:
        print("no runs with SASS counts to fit", file=sys.stderr)
        return 1
    print(f"efficiency {cal.efficiency:.3f}, overheads {cal.overhead_s}")
    for r, q in cal.residuals:
        print(
            f"  {r['dtype']} {r['pass']} 2N={r['rows']}: {r['fastcl_ms']} ms measured, predicted / measured {q:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
