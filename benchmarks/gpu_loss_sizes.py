"""The NT-Xent and CLIP losses on one GPU at growing sizes, and the cost model's prediction beside
each fastcl time.

    python benchmarks/gpu_loss_sizes.py --out DIR           # DIR/loss-sizes.json, DIR/loss-sizes.csv
    python benchmarks/gpu_loss_sizes.py --million-only --json F  # 2N = 1,048,576 alone
    python benchmarks/gpu_loss_sizes.py ncu --out DIR       # Nsight Compute: DIR/ncu.csv, DIR/ncu.json
    python benchmarks/gpu_loss_sizes.py --device cpu --sizes 256 --out DIR  # CPU dry run, no GPU

Timing mode: bf16, D = 128, temperature 0.5 (bench_ntxent.py's), forward (under no_grad) and
forward + backward of
  naive   fastcl.bench.baselines.nt_xent_naive (normalize, matmul, mask, cross-entropy; bench_ntxent.py's
          baseline), skipped where its (2N)^2 logits would not fit, and on an out-of-memory error;
  fastcl  fastcl.functional.nt_xent;
  infcl   Inf-CL 1.2.1 (pip inf-cl; `scripts/fetch_gpu_wheels.sh` fetches the wheel for the offline GPU
          machine): cal_inf_loss(z / t, z, labels=partner, head_dim=128) on z = normalize([z1; z2]): the
          same (2N)^2 logits and the same positives, but Inf-CL has no self-mask, so the diagonal stays
          in its denominator and its loss value differs from NT-Xent's (its time is the comparable part);
          skipped when inf_cl is not importable;
at 2N = 4096, 16384, 65536, 262144, and fastcl alone at 2N = 1,048,576 (forward + backward once).
CLIP rows (pass "clip", the cost model's name: forward + backward of CLIP's symmetric loss over two
(B, D) towers, B x B logits in each direction; `rows` is B), logit scale 100 (temperature 0.01), of
  naive   open_clip's ClipLoss math in plain PyTorch on normalised features
          (fastcl.bench.baselines.clip_loss: logits = a @ b.T * scale, the mean of cross_entropy(logits)
          and cross_entropy(logits.T)),
          skipped where its B x B logits would not fit, and on an out-of-memory error;
  fastcl  fastcl.functional.info_nce(a, b, symmetric=True, temperature=1 / scale) (the fused pair op,
          and the loss behind fastcl.integrations.open_clip.ClipLoss);
at B = 4096, 16384, 65536 with D = 128 and B = 16384 with D = 512 (`--clip`; 'none' leaves them out;
on the CPU dry run each of --sizes at --dim and the smallest at D = 512); a few seconds of GPU time.
Times are CUDA-event medians of a few repeats after warm-up (the first, warm-up call also measures
the peak: torch.cuda.max_memory_allocated beyond the inputs). Every fastcl row carries the cost
model's predicted ms (fastcl.bench.cost_model on fastcl.bench.sass.analyse of the built fastcl._C's
cubins, as `python -m fastcl.bench.sass --from-build` prints it; a CLIP row's at its own D). The CSV
has the columns of benchmarks/data/cuda_runs.csv (append its rows there, without the header, to
recalibrate; the fit uses the fwd and fwd+bwd rows and leaves the clip rows out, which check the
clip prediction instead); the JSON also holds `sass_counts`, the built kernels' per-logit counts
in the format of benchmarks/data/sass_counts_<commit>.json, so the fit needs no recompilation of
this tree.

The commit is FASTCL_COMMIT, else `git rev-parse --short HEAD` (+"-dirty" when fastcl/csrc differs
from it), else "unknown"; csrc_sha (a hash of fastcl/csrc) names the measured kernels in any case.

ncu mode: Nsight Compute on one forward + backward of fastcl at 2N = 16384 bf16 D = 128 (the
forward kernel's launch and the backward's grad_mma_kernel/grad_kernel launches): tensor-pipe and issue
utilisation, shared-memory bank conflicts and wavefronts (LDS, STS, LDSM), executed warp- and
thread-instructions (per logit, beside the SASS instrument's static count), registers and
occupancy. Metrics the installed ncu does not know are dropped (listed in ncu.json)."""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import hashlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's fastcl, also when run as a plain script

import torch
import torch.nn.functional as F

SIZES = (4096, 16384, 65536, 262144)
MILLION = 1 << 20
DIM = 128
TEMPERATURE = 0.5
NCU_ROWS = 16384
# CLIP (B, D) cases on the GPU, forward + backward: open_clip's ViT-B widths are 512 (the last one).
CLIP_CASES = ((4096, DIM), (16384, DIM), (65536, DIM), (16384, 512))
CLIP_WIDE_DIM = 512  # the CPU dry run's wide case
CLIP_SCALE = 100.0  # open_clip's logit_scale at its clamp (trained CLIP): temperature 1 / 100
CSV_COLUMNS = ["date", "gpu", "commit", "torch", "dtype", "pass", "rows", "D", "naive_ms", "fastcl_ms"]
KERNEL_REGEX = "forward_mma_kernel|forward_kernel|grad_mma_kernel|grad_kernel"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# ---------------------------------------------------------------------------------------------
# provenance


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **kw)


def _git(*args: str) -> str | None:
    try:
        done = _run(["git", "-C", str(REPO), *args], timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def csrc_sha() -> str:
    """A hash of the kernel sources (fastcl/csrc, without the simulator): names what was measured."""
    digest = hashlib.sha256()
    root = REPO / "fastcl" / "csrc"
    for path in sorted(root.rglob("*")):
        if path.is_file() and "sim" not in path.relative_to(root).parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def commit_id() -> str:
    env = os.environ.get("FASTCL_COMMIT")
    if env:
        return env
    head = _git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    dirty = _git("status", "--porcelain", "--", "fastcl/csrc")
    return head + ("-dirty" if dirty else "")


def provenance(device: str) -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "commit": commit_id(),
        "csrc_sha": csrc_sha(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


# ---------------------------------------------------------------------------------------------
# the cost model's prediction for the built kernels


class Predictor:
    """fastcl.bench.cost_model on the SASS of the built fastcl._C; every failure is a reason, not a crash."""

    def __init__(self, D: int, commit: str):
        self.error = None
        self.reports, self.counts, self.cal = [], {}, None
        self._counts_at: dict[int, dict] = {}
        try:
            from fastcl.bench import cost_model, sass

            self.reports = sass.analyse_build()
            self.counts = self._counts_at[D] = cost_model.counts_from_reports(self.reports, D)
            if not self.counts:
                raise RuntimeError("no sm_90 loss kernels in the built fastcl._C (built for another arch?)")
            self.cal = cost_model.fit()
            if self.cal is None:
                raise RuntimeError("no calibration (benchmarks/data/cuda_runs.csv with SASS counts)")
        except Exception as e:  # noqa: BLE001 (the timings matter more than the prediction)
            self.error = f"{type(e).__name__}: {e}"
        self.D, self.commit = D, commit

    def counts_at(self, D: int) -> dict:
        """counts[dtype][role] for the kernels the op runs at feature size D (D's own instantiations)."""
        if D not in self._counts_at:
            from fastcl.bench import cost_model

            try:
                self._counts_at[D] = cost_model.counts_from_reports(self.reports, D)
            except Exception as e:  # noqa: BLE001 (a kernel the traits cannot size at D: no prediction)
                print(f"cost model at D = {D}: {type(e).__name__}: {e}", file=sys.stderr)
                self._counts_at[D] = {}
        return self._counts_at[D]

    def predict(
        self, dtype: str, pass_: str, rows: int, D: int | None = None
    ) -> tuple[float | None, str | None]:
        """pass_ "fwd", "fwd+bwd" (rows = 2N) or "clip" (rows = B: two B x B directions); D: the
        feature size (default the one the predictor was made for)."""
        if self.error:
            return None, None
        counts = self.counts_at(self.D if D is None else D)
        if dtype not in counts:
            return None, None
        seconds, bounds = self.cal.predict(counts, dtype, pass_, rows)
        return seconds * 1e3, "/".join(sorted(set(bounds)))

    def calibration(self) -> dict | None:
        if self.cal is None:
            return None
        return {
            "commit": self.cal.commit,
            "efficiency": self.cal.efficiency,
            "overhead_s": self.cal.overhead_s,
        }

    def sass_counts(self) -> dict | None:
        """benchmarks/data/sass_counts_<commit>.json's content for these kernels."""
        if not self.counts:
            return None
        from fastcl.bench import cost_model

        return cost_model.counts_summary(self.reports, self.D, self.commit)

    def per_logit(self) -> dict[str, dict]:
        """Per kernel name (sm_90): the SASS instrument's per-logit counts at D."""
        out = {}
        for r in self.reports:
            if r.arch.rstrip("a") == "90" and r.main is not None and r.traits is not None:
                try:
                    out[r.name] = r.per_logit(self.D)
                except Exception as e:  # noqa: BLE001 (a kernel the traits cannot size: no comparison)
                    print(f"per-logit counts of {r.name}: {e}", file=sys.stderr)
        return out


# ---------------------------------------------------------------------------------------------
# the losses


def naive_loss(z1, z2):
    from fastcl.bench.baselines import nt_xent_naive

    return nt_xent_naive(z1, z2, TEMPERATURE)


def fastcl_loss(z1, z2):
    from fastcl import functional

    return functional.nt_xent(z1, z2, temperature=TEMPERATURE)


def naive_clip_loss(a, b):
    """open_clip's ClipLoss math in plain PyTorch on normalised features
    (fastcl.bench.baselines.clip_loss: logits = a_n @ b_n.T / t, the mean of the row-wise and the
    column-wise cross-entropy)."""
    from fastcl.bench.baselines import clip_loss

    return clip_loss(a, b, temperature=1 / CLIP_SCALE)


def fastcl_clip_loss(a, b):
    from fastcl import functional

    return functional.info_nce(a, b, symmetric=True, temperature=1 / CLIP_SCALE)


def load_infcl():
    """(loss function, version, None) or (None, None, why not)."""
    try:
        from importlib.metadata import version

        from inf_cl import cal_inf_loss
    except Exception as e:  # noqa: BLE001 (ImportError, or triton failing to import)
        return None, None, f"inf_cl not importable ({type(e).__name__}: {e})"
    try:
        ver = version("inf-cl")
    except Exception:  # noqa: BLE001
        ver = "?"

    def infcl_loss(z1, z2):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        n = z1.shape[0]
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        # No self-mask in Inf-CL: the diagonal stays in the denominator (same work, other value).
        return cal_inf_loss(z / TEMPERATURE, z, labels=partner, head_dim=z.shape[1])

    return infcl_loss, ver, None


def naive_fits(rows: int, pass_: str, device: str) -> str | None:
    """Why the naive loss is not tried at this size, or None. The first H200 run measured 5 bytes a
    logit forward (bf16 logits, the mask, the masked copy) and 7 with the backward; a margin on top.
    CLIP (rows = B, B x B logits): the logits and both directions' log-softmax forward, their
    gradients and the logits' gradient backward, about 10 bytes a logit in bf16 (estimated, not yet
    measured), 12 with the margin."""
    if device != "cuda":
        return None
    need = rows * rows * {"fwd": 6, "fwd+bwd": 9, "clip": 12}[pass_]
    free, _ = torch.cuda.mem_get_info()
    if need > 0.9 * free:
        return f"skipped: needs about {need / 2**30:,.0f} GiB, {free / 2**30:,.0f} GiB free"
    return None


# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure(loss_fn, z1, z2, pass_: str, device: str, warmup: int, repeats: int) -> dict:
    """Peak (on the first call), then the median of `repeats` timed calls after `warmup` in all.
    pass_ "fwd" runs under no_grad; "fwd+bwd" and "clip" (CLIP's loss) run forward + backward."""

    def step():
        if pass_ == "fwd":
            with torch.no_grad():
                return loss_fn(z1, z2)
        z1.grad = z2.grad = None
        loss = loss_fn(z1, z2)
        loss.backward()
        return loss

    _sync(device)
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = step()
    _sync(device)
    first_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device == "cuda" else None
    value = float(loss.detach().float())
    del loss
    finite = None
    if pass_ != "fwd":
        finite = bool(torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all())
    for _ in range(max(0, warmup - 1)):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times) if times else first_s * 1e3
    return {
        "ms": ms,
        "times_ms": times,
        "first_call_ms": first_s * 1e3,
        "peak_bytes": peak,
        "loss": value,
        "finite_grads": finite,
    }


def schedule(rows: int) -> tuple[int, int]:
    """(warm-up calls, timed repeats) by size: about 1-3 s of GPU time per case at the top."""
    if rows >= 262144:
        return 1, 3
    if rows >= 65536:
        return 2, 5
    return 3, 10


def run_case(name, loss_fn, rows, pass_, args, gen, dim: int | None = None) -> dict:
    """One (implementation, pass, size): NT-Xent on two (rows / 2, D) views, or for pass "clip"
    CLIP's loss on two (rows, D) towers (rows = B)."""
    device, dtype = args.device, DTYPES[args.dtype]
    dim = args.dim if dim is None else dim
    row = {"impl": name, "pass": pass_, "rows": rows, "D": dim, "dtype": args.dtype}
    if name == "naive":
        why = naive_fits(rows, pass_, device)
        if why:
            return {**row, "status": why}
    n = rows if pass_ == "clip" else rows // 2
    z1 = z2 = None
    gen.manual_seed(rows)  # every implementation and pass sees the same embeddings at a size
    try:
        z1, z2 = (
            torch.randn(n, dim, generator=gen, device=device, dtype=torch.float32).to(dtype).requires_grad_()
            for _ in range(2)
        )
        warmup, repeats = (1, 0) if rows >= MILLION else schedule(rows)
        if args.repeats is not None:
            repeats = args.repeats
        row.update(measure(loss_fn, z1, z2, pass_, device, warmup, repeats))
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        where = traceback.extract_tb(e.__traceback__)[-1]
        why = str(e)[:300] or f"at {Path(where.filename).name}:{where.lineno} `{where.line}`"
        row["status"] = ("out of memory: " if _is_oom(e) else "error: ") + f"{type(e).__name__}: {why}"
    finally:
        del z1, z2
        _free(device)
    return row


def _fmt(v, spec=",.2f", none="-"):
    return none if v is None else format(v, spec)


def table(rows: list[dict], size: str = "2N") -> str:
    """NT-Xent rows (size "2N"), or CLIP rows (size "B", with their D)."""
    clip = size == "B"
    head = f"| impl | pass | {size} |{' D |' if clip else ''} ms | peak MiB | loss | predicted ms | "
    lines = [
        head + "predicted / measured | status |",
        f"|---|---|---:|{'---:|' if clip else ''}---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = r["predicted_ms"] / r["ms"] if r.get("predicted_ms") and r.get("ms") else None
        peak = r["peak_bytes"] / 2**20 if r.get("peak_bytes") is not None else None
        dim = f" {r['D']} |" if clip else ""
        lines.append(
            f"| {r['impl']} | {r['pass']} | {r['rows']:,} |{dim} {_fmt(r.get('ms'), ',.3f')} | "
            f"{_fmt(peak, ',.1f')} | {_fmt(r.get('loss'), '.4f')} | {_fmt(r.get('predicted_ms'), ',.3f')} | "
            f"{_fmt(ratio, '.2f')} | {r['status'] if r['status'] != 'ok' else ''} |"
        )
    return "\n".join(lines)


def csv_rows(result: dict) -> list[dict]:
    """cuda_runs.csv rows: one per (pass, size, D) with a measured fastcl time; pass "clip" is CLIP's
    loss forward + backward at rows = B (the cost model's name; its fit leaves these rows out)."""
    prov, out = result["provenance"], []
    naive = {
        (r["pass"], r["rows"], r["D"]): r
        for r in result["rows"]
        if r["impl"] == "naive" and r["status"] == "ok"
    }
    for r in result["rows"]:
        if r["impl"] != "fastcl" or r["status"] != "ok":
            continue
        nv = naive.get((r["pass"], r["rows"], r["D"]))
        out.append(
            {
                "date": prov["date"],
                "gpu": prov["gpu"],
                "commit": prov["commit"],
                "torch": prov["torch"],
                "dtype": r["dtype"],
                "pass": r["pass"],
                "rows": r["rows"],
                "D": r["D"],
                "naive_ms": f"{nv['ms']:.3f}" if nv else "",
                "fastcl_ms": f"{r['ms']:.3f}",
            }
        )
    return out


def write_outputs(result: dict, json_path: Path | None, csv_path: Path | None) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if csv_path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows(result))
        csv_path.write_text(buf.getvalue())


def clip_schedule(args) -> list[tuple[int, int]]:
    """The CLIP (B, D) cases: --clip, else CLIP_CASES on the GPU, and on the CPU dry run each of
    --sizes as B at --dim plus the smallest at D = 512."""
    if args.clip is not None:
        return [(b, args.dim if d is None else d) for b, d in args.clip]
    if args.device == "cuda":
        return list(CLIP_CASES)
    if not args.sizes:
        return []
    return [(b, args.dim) for b in args.sizes] + [(min(args.sizes), CLIP_WIDE_DIM)]


def _clip_cases(text: str) -> list[tuple[int, int | None]]:
    """--clip's value: B or BxD, comma-separated; "" or none: no CLIP rows."""
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for item in text.split(","):
        b, _, d = item.strip().lower().partition("x")
        out.append((int(b), int(d) if d else None))
    return out


def time_main(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_loss_sizes: no CUDA GPU here (torch.cuda.is_available() is False); this measures GPU "
            "times. For a dry run of its code paths on the CPU: --device cpu --sizes 256",
            file=sys.stderr,
        )
        return 2
    import fastcl

    if args.device == "cuda" and not fastcl.has_cuda_ops():
        print(
            "gpu_loss_sizes: fastcl._C has no CUDA ops (build it with CUDA: setup.py build_ext --inplace)",
            file=sys.stderr,
        )
        return 2
    prov = provenance(args.device)
    sizes = [] if args.million_only else args.sizes
    impls = [i for i in args.impls]
    infcl, infcl_version, infcl_why = load_infcl() if "infcl" in impls else (None, None, "not asked for")
    losses = {"naive": naive_loss, "fastcl": fastcl_loss, "infcl": infcl}
    clip_losses = {"naive": naive_clip_loss, "fastcl": fastcl_clip_loss}
    clip_cases = [] if args.million_only else clip_schedule(args)
    t0 = time.perf_counter()
    predictor = Predictor(args.dim, prov["commit"])
    print(f"cost model: {predictor.error or 'ok'} ({time.perf_counter() - t0:.1f} s)", flush=True)
    gen = torch.Generator(device=args.device).manual_seed(0)
    rows = []
    # Inf-CL last: a Triton kernel that faults would poison the CUDA context for every later case.
    # (impl, rows, pass, D): NT-Xent's rows are 2N; CLIP's (pass "clip", fwd+bwd) are B.
    cases = [(impl, n, p, args.dim) for n in sizes for impl in impls if impl != "infcl" for p in args.passes]
    if args.million or args.million_only:
        cases.append(("fastcl", args.million_rows, "fwd+bwd", args.dim))
    cases += [(impl, b, "clip", d) for b, d in clip_cases for impl in impls if impl in clip_losses]
    cases += [("infcl", n, p, args.dim) for n in sizes if "infcl" in impls for p in args.passes]
    for impl, n, pass_, dim in cases:
        if impl == "infcl" and infcl is None:
            row = {
                "impl": impl,
                "pass": pass_,
                "rows": n,
                "D": dim,
                "dtype": args.dtype,
                "status": f"skipped: {infcl_why}",
            }
        else:
            loss_fn = clip_losses[impl] if pass_ == "clip" else losses[impl]
            t = time.perf_counter()
            row = run_case(impl, loss_fn, n, pass_, args, gen, dim)
            row["wall_s"] = time.perf_counter() - t
        if impl == "fastcl":
            row["predicted_ms"], row["predicted_bound"] = predictor.predict(args.dtype, pass_, n, dim)
        rows.append(row)
        extra = ""
        if row.get("ms") is not None:
            peak = row["peak_bytes"] / 2**20 if row["peak_bytes"] is not None else None
            extra = f"{row['ms']:,.3f} ms, peak {_fmt(peak, ',.1f')} MiB, loss {row['loss']:.4f}"
            if row.get("predicted_ms"):
                extra += f", predicted {row['predicted_ms']:,.3f} ms"
            if row.get("finite_grads") is False:
                extra += ", NON-FINITE GRADIENTS"
        size = f"B={n:>9,} D={dim}" if pass_ == "clip" else f"2N={n:>9,}"
        print(f"{impl:6s} {pass_:7s} {size}: {extra or row['status']}", flush=True)
    if args.merge:
        for path in args.merge:
            try:
                rows += json.loads(Path(path).read_text())["rows"]
            except (OSError, ValueError, KeyError) as e:
                print(f"--merge {path}: {e}", file=sys.stderr)
    order = ["naive", "fastcl", "infcl"]
    rows.sort(key=lambda r: (r["pass"] == "clip", r["D"], r["rows"], order.index(r["impl"]), r["pass"]))
    result = {
        "provenance": prov,
        "device": args.device,
        "dtype": args.dtype,
        "D": args.dim,
        "temperature": TEMPERATURE,
        "clip": {
            "pass": "clip: forward + backward of CLIP's symmetric loss; rows = B, the batch of each tower",
            "scale": CLIP_SCALE,
            "naive": "fastcl.bench.baselines.clip_loss(a, b, 1 / scale) "
                     "(open_clip ClipLoss math on normalised a, b)",
            "fastcl": "fastcl.functional.info_nce(a, b, symmetric=True, temperature=1 / scale)",
            "cases": [list(c) for c in clip_cases],
        },
        "timing": (
            "CUDA events: median of the timed repeats after warm-up; peak: max_memory_allocated beyond "
            "the inputs, on the first call"
            if args.device == "cuda"
            else "CPU dry run: perf_counter"
        ),
        "infcl": {
            "version": infcl_version,
            "status": infcl_why or "ok",
            "call": "cal_inf_loss(z / t, z, labels=partner, head_dim=D), z = normalize([z1; z2]); no self-mask",
        },
        "cost_model": {"error": predictor.error, "calibration": predictor.calibration()},
        "rows": rows,
        "sass_counts": predictor.sass_counts(),
    }
    out = Path(args.out) if args.out else None
    json_path = Path(args.json) if args.json else (out / "loss-sizes.json" if out else None)
    csv_path = Path(args.csv) if args.csv else (out / "loss-sizes.csv" if out else None)
    write_outputs(result, json_path, csv_path)
    print()
    print(
        f"NT-Xent, {args.dtype}, D = {args.dim}, on {prov['gpu']} (commit {prov['commit']}, csrc {prov['csrc_sha']}, "
        f"torch {prov['torch']})"
    )
    print(table([r for r in rows if r["pass"] != "clip"]))
    clip_rows = [r for r in rows if r["pass"] == "clip"]
    if clip_rows:
        print()
        print(
            f"CLIP (symmetric InfoNCE, logit scale {CLIP_SCALE:g}), {args.dtype}, forward + backward, "
            "B x B logits each way; naive: open_clip's ClipLoss math in PyTorch"
        )
        print(table(clip_rows, size="B"))
    if csv_path:
        print(f"\nwrote {csv_path} (cuda_runs.csv rows) and {json_path}")
    bad = [
        r for r in rows if r["impl"] == "fastcl" and (r["status"] != "ok" or r.get("finite_grads") is False)
    ]
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------
# Nsight Compute

NCU_METRICS = [
    "gpu__time_duration.sum",
    "sm__cycles_elapsed.avg",
    "sm__cycles_active.avg",
    "launch__registers_per_thread",
    "launch__grid_size",
    "launch__block_size",
    "launch__shared_mem_per_block_dynamic",
    "launch__shared_mem_per_block_static",
    "launch__occupancy_limit_registers",
    "launch__occupancy_limit_shared_mem",
    "sm__maximum_warps_per_active_cycle_pct",  # theoretical occupancy
    "sm__warps_active.avg.pct_of_peak_sustained_active",  # achieved occupancy
    # tensor pipe (mma.sync issues HMMA on Hopper; wgmma would show as gmma)
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__inst_executed_pipe_tensor_op_hmma.sum",
    # issue
    "sm__inst_issued.sum",
    "sm__inst_issued.avg.per_cycle_active",
    "sm__inst_issued.avg.pct_of_peak_sustained_active",
    "sm__issue_active.avg.pct_of_peak_sustained_active",
    "sm__issue_active.sum",
    # executed instructions
    "smsp__inst_executed.sum",
    "smsp__thread_inst_executed.sum",
    "sm__sass_thread_inst_executed.sum",
    "smsp__inst_executed_pipe_xu.sum",
    "smsp__inst_executed_op_ldsm.sum",
    "smsp__inst_executed_op_shared_ld.sum",
    "smsp__inst_executed_op_shared_st.sum",
    "smsp__inst_executed_op_global_ld.sum",
    # shared memory: bank conflicts and wavefronts
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum",
    "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    "sm__sass_l1tex_data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum",
    "sm__sass_l1tex_data_bank_conflicts_pipe_lsu_mem_shared_op_ldsm.sum",
    "sm__sass_inst_executed_op_ldsm.sum",
    # where the warps wait (per issued instruction)
    "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio",
    # memory system, for completeness
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
]


NCU_MINIMAL = [
    "gpu__time_duration.sum",
    "launch__registers_per_thread",
    "smsp__inst_executed.sum",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
]


def find_ncu() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates = [os.path.join(home, "bin", "ncu")]
    for pattern in (
        "/opt/nvidia/nsight-compute/*/ncu",
        "/usr/local/cuda*/nsight-compute*/ncu",
        "/opt/nvidia/nsight-compute*/ncu",
    ):
        import glob

        candidates += sorted(glob.glob(pattern), reverse=True)
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def filter_metrics(metrics: list[str], catalogue: str | None) -> tuple[list[str], list[str]]:
    """(kept, dropped): a metric is kept when `ncu --query-metrics` lists it (full name, or its base
    name where the listing has no suffixes), and always for launch__* (not listed) or without a listing."""
    if not catalogue:
        return list(metrics), []
    tokens = set(re.findall(r"[A-Za-z0-9_.]+", catalogue))
    kept, dropped = [], []
    for m in metrics:
        if m.startswith("launch__") or m in tokens or m.split(".")[0] in tokens:
            kept.append(m)
        else:
            dropped.append(m)
    return kept, dropped


def unknown_metrics(text: str, metrics: list[str]) -> list[str]:
    """The asked-for metrics an ncu error names, as in `==ERROR== Failed to find metric sm__x.sum` or
    `... metric regex:^sm__x\\.(sum|avg|...)$`."""
    named = re.findall(
        r"[Ff]ailed to find metrics? \"?(?:regex:)?\^?([A-Za-z0-9_]+(?:\\?\.[A-Za-z0-9_]+)*)", text
    )
    named = {n.replace("\\", "") for n in named}
    bases = {n.split(".")[0] for n in named}
    return [m for m in metrics if m in named or (m.split(".")[0] in bases and m not in NCU_MINIMAL)]


def parse_raw_csv(text: str) -> list[dict]:
    """`ncu --import R --csv --page raw --print-units base`: a header of metric names, a row of units,
    then one row per profiled kernel."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if not lines:
        return []
    table_rows = list(csv.reader(lines))
    header, rest = table_rows[0], table_rows[1:]
    if rest and not (rest[0] and rest[0][0].strip().isdigit()):
        rest = rest[1:]  # the units row
    out = []
    for values in rest:
        row = {}
        for k, v in zip(header, values):
            s = v.replace(",", "").strip()
            try:
                row[k] = float(s)
            except ValueError:
                row[k] = v
        out.append(row)
    return out


def first(*values):
    return next((v for v in values if v is not None), None)


def derive(kernels: list[dict], rows: int, sass_per_logit: dict[str, dict]) -> list[dict]:
    logits = float(rows) * rows
    out = []
    for k in kernels:
        from fastcl.bench.sass import short_name

        name = short_name(str(k.get("Kernel Name") or k.get("Function Name") or "?"))

        def g(metric, k=k):
            v = k.get(metric)
            return v if isinstance(v, float) else None

        def ratio(a, b):
            return a / b if a is not None and b else None

        d = {
            "kernel": name,
            "duration_ms": ratio(g("gpu__time_duration.sum"), 1e6),
            "registers": g("launch__registers_per_thread"),
            "grid": g("launch__grid_size"),
            "block": g("launch__block_size"),
            "theoretical_occupancy_pct": g("sm__maximum_warps_per_active_cycle_pct"),
            "achieved_occupancy_pct": g("sm__warps_active.avg.pct_of_peak_sustained_active"),
            "tensor_hmma_pct": g("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"),
            "tensor_pipe_pct": g("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
            "issue_active_pct": g("sm__issue_active.avg.pct_of_peak_sustained_active"),
            "inst_issued_per_cycle": g("sm__inst_issued.avg.per_cycle_active"),
            "issued_per_issue_active": ratio(g("sm__inst_issued.sum"), g("sm__issue_active.sum")),
            "warp_inst_x32_per_logit": ratio(
                32 * g("smsp__inst_executed.sum") if g("smsp__inst_executed.sum") else None, logits
            ),
            "thread_inst_per_logit": ratio(
                first(g("sm__sass_thread_inst_executed.sum"), g("smsp__thread_inst_executed.sum")), logits
            ),
            "mufu_x32_per_logit": ratio(
                32 * g("smsp__inst_executed_pipe_xu.sum") if g("smsp__inst_executed_pipe_xu.sum") else None,
                logits,
            ),
            "smem_ld_bank_conflicts": g("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum"),
            "smem_st_bank_conflicts": g("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum"),
            "smem_ld_wavefronts": g("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"),
            "smem_st_wavefronts": g("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum"),
            "ldsm_wavefronts": g("sm__sass_l1tex_data_pipe_lsu_wavefronts_mem_shared_op_ldsm.sum"),
            "ldsm_bank_conflicts": g("sm__sass_l1tex_data_bank_conflicts_pipe_lsu_mem_shared_op_ldsm.sum"),
            "ldsm_inst": first(g("sm__sass_inst_executed_op_ldsm.sum"), g("smsp__inst_executed_op_ldsm.sum")),
        }
        d["ldsm_wavefronts_per_inst"] = ratio(d["ldsm_wavefronts"], d["ldsm_inst"])
        stalls = {}
        for metric, value in k.items():
            m = re.match(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active", metric)
            if m and isinstance(value, float):
                stalls[m.group(1)] = value
        d["stalls_per_issue"] = stalls
        sass = sass_per_logit.get(name)
        if sass:
            d["sass_instr_per_logit"] = sass.get("all")
            d["sass_mufu_per_logit"] = sass.get("mufu")
            d["measured_over_sass_instr"] = ratio(d["warp_inst_x32_per_logit"], sass.get("all"))
        out.append(d)
    return out


def ncu_table(derived: list[dict]) -> str:
    cols = [
        ("kernel", "kernel", "s"),
        ("ms", "duration_ms", ",.3f"),
        ("regs", "registers", ".0f"),
        ("occ. theor/achieved %", None, None),
        ("tensor %", "tensor_hmma_pct", ".1f"),
        ("issue active %", "issue_active_pct", ".1f"),
        ("IPC", "inst_issued_per_cycle", ".2f"),
        ("instr x32/logit", "warp_inst_x32_per_logit", ",.1f"),
        ("SASS instr/logit", "sass_instr_per_logit", ",.1f"),
        ("thread instr/logit", "thread_inst_per_logit", ",.1f"),
        ("LDS/STS conflicts", None, None),
        ("LDSM wavefronts/inst", "ldsm_wavefronts_per_inst", ".2f"),
    ]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|---" * len(cols) + "|"]
    for d in derived:
        cells = []
        for title, key, spec in cols:
            if title.startswith("occ."):
                cells.append(
                    f"{_fmt(d['theoretical_occupancy_pct'], '.1f')} / {_fmt(d['achieved_occupancy_pct'], '.1f')}"
                )
            elif title.startswith("LDS/STS"):
                cells.append(
                    f"{_fmt(d['smem_ld_bank_conflicts'], ',.0f')} / {_fmt(d['smem_st_bank_conflicts'], ',.0f')}"
                )
            elif spec == "s":
                cells.append(str(d[key]))
            else:
                cells.append(_fmt(d.get(key), spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ncu_main(args) -> int:
    out = Path(args.out or ".")
    logs = Path(args.logs or out)
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    summary = {"rows": args.ncu_rows, "dtype": args.dtype, "D": args.dim, "kernel_regex": KERNEL_REGEX}
    ncu = find_ncu()
    if ncu is None:
        print("ncu (Nsight Compute CLI) not found: skipped")
        (out / "ncu.json").write_text(
            json.dumps({**summary, "status": "skipped: ncu not found"}, indent=1) + "\n"
        )
        return 0
    summary["ncu"] = ncu
    try:
        summary["ncu_version"] = _run([ncu, "--version"], timeout=30).stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    catalogue = None
    try:
        done = _run([ncu, "--query-metrics", "--query-metrics-mode", "all"], timeout=45)
        if done.returncode == 0 and "__" in done.stdout:
            catalogue = done.stdout
        else:
            done = _run([ncu, "--query-metrics"], timeout=45)
            catalogue = done.stdout if done.returncode == 0 and "__" in done.stdout else None
        # Only the names near ours (the whole catalogue runs to megabytes): what to ask for next time.
        near = re.compile(
            r"tensor|inst_issued|issue_active|inst_executed|bank_conflicts|wavefronts_mem_shared|"
            r"warps_active|issue_stalled|occupancy"
        )
        kept = [ln for ln in (done.stdout + done.stderr).splitlines() if near.search(ln)]
        (logs / "ncu-metrics-near.txt").write_text("\n".join(kept) + "\n")
    except (OSError, subprocess.SubprocessError) as e:
        print(f"ncu --query-metrics failed ({e}); asking for every metric")
    metrics, dropped = filter_metrics(NCU_METRICS, catalogue)
    report = logs / "ncu-loss"
    status = "ok"
    for attempt in range(4):
        cmd = [
            ncu,
            "--target-processes",
            "all",
            "--clock-control",
            "none",
            "--kernel-name",
            f"regex:{KERNEL_REGEX}",
            "--launch-count",
            str(args.launch_count),
            "--metrics",
            ",".join(metrics),
            "--export",
            str(report),
            "--force-overwrite",
            sys.executable,
            str(Path(__file__).resolve()),
            "ncu-target",
            "--ncu-rows",
            str(args.ncu_rows),
            "--dtype",
            args.dtype,
            "--dim",
            str(args.dim),
        ]
        print(
            f"ncu run {attempt}: {len(metrics)} metrics, kernels {KERNEL_REGEX}, 2N = {args.ncu_rows:,}",
            flush=True,
        )
        try:
            done = _run(cmd, timeout=args.ncu_timeout)
        except subprocess.TimeoutExpired:
            status = f"ncu timed out after {args.ncu_timeout} s"
            break
        text = done.stdout + done.stderr
        (logs / f"ncu-run{attempt}.log").write_text(text)
        print(text[-1500:])
        bad = unknown_metrics(text, metrics)
        if done.returncode != 0 and bad:
            dropped += bad
            metrics = [m for m in metrics if m not in bad]
            continue
        if done.returncode != 0 and "metric" in text.lower() and metrics != NCU_MINIMAL:
            dropped += [m for m in metrics if m not in NCU_MINIMAL]
            metrics = list(NCU_MINIMAL)  # an error about metrics that names none: the few every ncu has
            continue
        status = "ok" if done.returncode == 0 else f"ncu exit {done.returncode} (ncu-run{attempt}.log)"
        break
    summary.update(status=status, metrics=metrics, dropped_metrics=dropped)
    rep_file = report.with_suffix(".ncu-rep")
    kernels = []
    if rep_file.exists():
        done = _run(
            [ncu, "--import", str(rep_file), "--csv", "--page", "raw", "--print-units", "base"], timeout=120
        )
        if done.returncode != 0:  # an older ncu without --print-units
            done = _run([ncu, "--import", str(rep_file), "--csv", "--page", "raw"], timeout=120)
        (out / "ncu.csv").write_text(done.stdout)
        kernels = parse_raw_csv(done.stdout)
    predictor = Predictor(args.dim, commit_id())
    derived = derive(kernels, args.ncu_rows, predictor.per_logit())
    summary["kernels"] = derived
    summary["sass_error"] = predictor.error
    (out / "ncu.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(
        f"\nNsight Compute, fastcl fwd+bwd at 2N = {args.ncu_rows:,}, {args.dtype}, D = {args.dim} ({status}; "
        f"{len(metrics)} metrics, {len(dropped)} unknown to this ncu and left out)"
    )
    print(ncu_table(derived) if derived else "(no kernels profiled)")
    if dropped:
        print(f"\nleft out (unknown to this ncu): {', '.join(dropped)}")
    return 0 if derived else 1


def ncu_target(args) -> int:
    """What ncu profiles: one forward + backward of fastcl (its first matching launches)."""
    import fastcl

    n = args.ncu_rows // 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    z1, z2 = (
        torch.randn(n, args.dim, generator=gen, device="cuda").to(DTYPES[args.dtype]).requires_grad_()
        for _ in range(2)
    )
    loss = fastcl.functional.nt_xent(z1, z2, temperature=TEMPERATURE)
    loss.backward()
    torch.cuda.synchronize()
    print(f"ncu target: loss {float(loss):.4f}")
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("mode", nargs="?", default="time", choices=["time", "ncu", "ncu-target"])
    p.add_argument("--out", help="folder for loss-sizes.json/.csv (time) or ncu.csv/ncu.json (ncu)")
    p.add_argument("--json", help="the JSON's path (default OUT/loss-sizes.json)")
    p.add_argument("--csv", help="the CSV's path (default OUT/loss-sizes.csv)")
    p.add_argument("--logs", help="ncu: folder for the report and logs (default OUT)")
    p.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the code paths"
    )
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument(
        "--sizes",
        type=lambda s: [int(v) for v in s.split(",")],
        default=list(SIZES),
        help="2N values, comma-separated (default 4096,16384,65536,262144)",
    )
    p.add_argument("--impls", type=lambda s: s.split(","), default=["naive", "fastcl", "infcl"])
    p.add_argument("--passes", type=lambda s: s.split(","), default=["fwd", "fwd+bwd"])
    p.add_argument("--repeats", type=int, help="timed repeats per case (default by size)")
    p.add_argument(
        "--clip",
        type=_clip_cases,
        help="CLIP cases, B or BxD comma-separated ('none': no CLIP rows; default "
        + ",".join(f"{b}" if d == DIM else f"{b}x{d}" for b, d in CLIP_CASES)
        + " on the GPU, --sizes and the smallest x 512 on the CPU)",
    )
    p.add_argument("--million", action="store_true", help="also fastcl fwd+bwd once at 2N = 1,048,576")
    p.add_argument("--million-only", action="store_true", help="only that")
    p.add_argument("--million-rows", type=int, default=MILLION, help=argparse.SUPPRESS)
    p.add_argument("--merge", action="append", help="fold in the rows of an earlier run's JSON")
    p.add_argument("--ncu-rows", type=int, default=NCU_ROWS)
    p.add_argument("--launch-count", type=int, default=4)
    p.add_argument("--ncu-timeout", type=int, default=150)
    args = p.parse_args(argv)
    bad = [i for i in args.impls if i not in ("naive", "fastcl", "infcl")]
    if bad or any(x not in ("fwd", "fwd+bwd") for x in args.passes):
        p.error(
            f"--impls takes naive,fastcl,infcl and --passes fwd,fwd+bwd (got {args.impls}, {args.passes})"
        )
    if args.mode == "ncu":
        return ncu_main(args)
    if args.mode == "ncu-target":
        return ncu_target(args)
    return time_main(args)


if __name__ == "__main__":
    sys.exit(main())
