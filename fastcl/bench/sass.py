"""`python -m fastcl.bench.sass` (`make sass`): what the loss kernels issue, read from their
machine code without a GPU, and what a calibrated cost model predicts from it.

Per kernel: registers, spills, shared memory, blocks per SM, and for the main loop (the outermost
loop that holds the tile's math): thread-instructions per logit, the tensor-core share, LDSM
against generic loads, MUFU per logit and barriers per tile. The cubins are compiled device-only
from fastcl/csrc with the project's flags (`--arch 90 80`), or taken from the built fastcl._C
(`--from-build`, no compiling: what the CI test reads).

Per-logit counts weight each main-loop instruction by the trips of the loops around it, from the
`// sass:` marks on their `for` lines (loop_marks.py): a loop that holds the math runs
ceil(D / chunk) times a trip unless marked. Both sides of a runtime branch count: an upper bound
for kernels with runtime feature branches (and unrolled copies guarded by a runtime `if`), exact
for straight-line ones."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cubins as cb
from . import loop_marks
from .kernel_traits import DTYPE_NAMES, KernelTraits, dtype_of, traits_of
from .sass_parse import Function, Loop, disassemble

# Per-SM limits used for blocks per SM: registers, threads, blocks, shared bytes (per SM, per block).
_SM_LIMITS = {
    "90": (65536, 2048, 32, 228 * 1024, 227 * 1024),
    "80": (65536, 2048, 32, 164 * 1024, 163 * 1024),
}


@dataclass
class MainLoop:
    """Static counts over the main loop, and its per-trip counts: split[cls][p] is the weighted count
    of class cls that runs (D / chunk)^p times a trip (loop_marks.weight of the loops around it)."""

    static: dict[str, int]
    cold: int  # instructions in loops marked cold, not counted per trip
    rare: int  # instructions in branches marked rare, left out of the common-case counts
    split: dict[str, dict[int, float]] = field(default_factory=dict)
    tensor_flops: dict[int, float] = field(default_factory=dict)

    def per_trip(self, cls: str, inner: int) -> float:
        return sum(v * inner**p for p, v in self.split.get(cls, {}).items())

    def flops_per_trip(self, inner: int) -> float:
        return sum(v * inner**p for p, v in self.tensor_flops.items())


@dataclass
class KernelReport:
    name: str  # demangled, without the namespaces
    mangled: str
    arch: str
    dtype: str
    registers: int
    stack: int  # bytes of local memory a thread uses: spills and local arrays
    spill_bytes: int | None  # ptxas's spill stores + loads (compiled cubins only)
    static_smem: int
    dynamic_smem: int
    blocks_per_sm: int
    main: MainLoop | None
    traits: KernelTraits | None = None

    def per_logit(self, D: int) -> dict[str, float]:
        """Thread-level counts per logit at feature size D (one pass of this kernel over all logits)."""
        t, m = self.traits, self.main
        inner = t.inner_trips(D, self.dtype)
        per = 32 * (t.threads // 32) / (t.tile_rows * t.tile_cols) * t.slices(D, self.dtype)
        out = {
            cls: m.per_trip(cls, inner) * per for cls in ("all", "tensor", "mufu", "ldsm", "generic", "local")
        }
        out["tensor_flops"] = (
            m.flops_per_trip(inner)
            * (t.threads // 32)
            / (t.tile_rows * t.tile_cols)
            * t.slices(D, self.dtype)
        )
        out["matmul_units"] = out["tensor_flops"] / (2 * D)  # U = one (2N x 2N x D) product
        out["barriers_per_tile"] = m.per_trip("barrier", inner)
        return out

    def summary(self, D: int) -> dict:
        row = {k: v for k, v in asdict(self).items() if k not in ("main", "traits")}
        if self.main is not None:
            row["main_loop_static"] = self.main.static
            row["tensor_share_static"] = self.main.static.get("tensor", 0) / max(1, self.main.static["all"])
            row["per_logit"] = self.per_logit(D)
        return row


def _is_math(fn: Function, lp: Loop) -> bool:
    c = fn.counts(lp.head, lp.tail)
    return c["tensor"] > 0 or c["ffma"] >= 32


def main_loop(fn: Function) -> MainLoop | None:
    """The outermost loop that holds the math, with each instruction weighted by the loops in it."""
    loops = fn.loops()
    outer = [lp for lp in loops if lp.parent is None and _is_math(fn, lp)]
    if not outer:
        return None
    main = max(outer, key=lambda lp: lp.tail - lp.head)
    nested = [
        (lp, loop_marks.weight(loop_marks.mark_at(fn.instrs[lp.tail].source), _is_math(fn, lp)))
        for lp in loops
        if lp is not main and main.contains(lp.head)
    ]
    split: dict[str, dict[int, float]] = {}
    flops: dict[int, float] = {}
    cold = rare = 0
    # nvdisasm sometimes gives an instruction inlined from a nested call only its innermost frames,
    # without the kernel's own line that the branch marks are on: such an instruction takes the
    # branch factor of the one before it (an inlined body lies together with its call site).
    kernel_file = fn.instrs[main.tail].source.rpartition(":")[0]
    previous = 1.0
    for i in range(main.head, main.tail + 1):
        ins = fn.instrs[i]
        share = loop_marks.branch_factor(*ins.chain)
        if ins.chain and ins.chain[-1].rpartition(":")[0] != kernel_file and share != 0.0:
            share = previous
        previous = share
        if share == 0.0:
            rare += 1
            continue
        factor, power = share, 0
        for lp, (f, p) in nested:
            if lp.contains(i):
                factor, power = factor * f, power + p
        if factor == 0.0:
            cold += 1
            continue
        for cls in ("all", ins.cls):
            split.setdefault(cls, {}).setdefault(power, 0.0)
            split[cls][power] += factor
        flops[power] = flops.get(power, 0.0) + factor * ins.mma_flops
    return MainLoop(dict(fn.counts(main.head, main.tail)), cold, rare, split, flops)


def blocks_per_sm(arch: str, registers: int, threads: int, smem: int) -> int:
    regs, max_threads, max_blocks, smem_sm, smem_block = _SM_LIMITS.get(arch.rstrip("a"), _SM_LIMITS["90"])
    warps = threads // 32
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = (regs // per_warp) // warps
    by_smem = smem_sm // (smem + 1024) if smem <= smem_block else 0
    return max(0, min(by_regs, max_threads // threads, max_blocks, by_smem))


def short_name(demangled: str) -> str:
    """A kernel's name without namespaces, parameters or `void `; ncu's `(bool)1` template arguments
    read as c++filt's `true`."""
    for prefix in ("fastcl::gpu::", "(anonymous namespace)::"):
        demangled = demangled.replace(prefix, "")
    demangled = demangled.replace("(bool)1", "true").replace("(bool)0", "false")
    return demangled.split("(")[0].removeprefix("void ").strip()


def analyse(cubins: list[Path], ptxas: dict | None = None, loss_only: bool = True) -> list[KernelReport]:
    reports = []
    for cubin in cubins:
        arch = cb.cubin_arch(cubin)
        funcs = disassemble(cubin)
        if not funcs:
            continue
        res = cb.resource_usage(cubin)
        names = cb.demangle(list(funcs))
        for mangled, fn in funcs.items():
            traits = traits_of(names[mangled])
            if loss_only and traits is None:
                continue
            r = res.get(mangled) or cb.Resources(0, 0, 0, 0)
            dtype = dtype_of(names[mangled])
            dyn = traits.dynamic_smem(dtype, names[mangled]) if traits else 0
            threads = traits.threads if traits else 256
            spill = None
            if ptxas and mangled in ptxas:
                spill = ptxas[mangled].spill_stores + ptxas[mangled].spill_loads
            reports.append(
                KernelReport(
                    short_name(names[mangled]),
                    mangled,
                    arch,
                    dtype,
                    r.registers,
                    r.stack,
                    spill,
                    r.shared,
                    dyn,
                    blocks_per_sm(arch, r.registers, threads, r.shared + dyn),
                    main_loop(fn) if traits else None,
                    traits,
                )
            )
    return sorted(reports, key=lambda k: (k.arch, k.traits.pass_ if k.traits else "", k.name))


def analyse_build(workdir: Path | None = None) -> list[KernelReport]:
    """The loss kernels of the built fastcl._C (its cubins extracted by cuobjdump: no compiling), in
    `workdir` or a temporary folder."""
    lib = cb.built_library()
    if lib is None:
        raise FileNotFoundError("no built fastcl._C (run `make build`)")
    if workdir is not None:
        return analyse(cb.extract_cubins(lib, workdir))
    with tempfile.TemporaryDirectory(prefix="fastcl-sass-") as tmp:
        return analyse(cb.extract_cubins(lib, Path(tmp)))


def compiled_cubins(args) -> tuple[list[Path], dict]:
    found, ptxas = [], {}
    for arch in args.arch:
        for pattern in ["*.cu"] if args.all else ["contrastive*.cu", "siglip*.cu"]:
            files, info = cb.compile_cubins(arch, Path(args.csrc), pattern=pattern)
            found += files
            ptxas.update(info)
    return found, ptxas


def format_table(reports: list[KernelReport], D: int) -> str:
    head = (
        "| kernel | sm | regs | spill B | local B | smem KiB | blocks/SM | loop instrs (rare) | tensor % | "
        "tensor % common | LDSM | generic LD/ST | local LD/ST | instr/logit | MUFU/logit | bar/tile | U |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in reports:
        if r.main is None:
            continue
        pl, st = r.per_logit(D), r.main.static
        spill = "-" if r.spill_bytes is None else str(r.spill_bytes)
        inner = r.traits.inner_trips(D, r.dtype)
        common = 100 * r.main.per_trip("tensor", inner) / max(1.0, r.main.per_trip("all", inner))
        lines.append(
            f"| {r.name} | {r.arch} | {r.registers} | {spill} | {r.stack} | "
            f"{(r.static_smem + r.dynamic_smem) / 1024:.1f} | {r.blocks_per_sm} | {st['all']} ({r.main.rare}) | "
            f"{100 * st.get('tensor', 0) / st['all']:.2f} | {common:.2f} | {st.get('ldsm', 0)} | "
            f"{st.get('generic', 0)} | "
            f"{st.get('local', 0)} | {pl['all']:.1f} | {pl['mufu']:.2f} | {pl['barriers_per_tile']:.0f} | "
            f"{pl['matmul_units']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from . import cost_model

    p = argparse.ArgumentParser(prog="python -m fastcl.bench.sass", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", default=["90"], help="compute capabilities to compile for (90 80)")
    p.add_argument("--from-build", action="store_true", help="read the built fastcl._C instead of compiling")
    p.add_argument(
        "--csrc", default=str(cb.CSRC), help="the csrc folder to compile (default: this checkout's)"
    )
    p.add_argument("--all", action="store_true", help="every kernel, not only the loss kernels")
    p.add_argument("-D", type=int, default=128, help="feature size for the per-logit counts (default 128)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.from_build:
        try:
            reports = analyse_build()
        except FileNotFoundError as e:
            raise SystemExit(f"{e}, or drop --from-build to compile") from e
    else:
        reports = analyse(*compiled_cubins(args))
    if not reports:
        print("no loss kernels found", file=sys.stderr)
        return 1
    print(
        f"Loss kernels' main loops, D = {args.D}: static SASS counts of the whole loop (with the instructions of "
        f"branches marked rare in parentheses), and per-logit thread-instructions of the common path (no rare "
        f"branch; a pass's kernels each cover every logit):\n"
    )
    print(format_table(reports, args.D))
    print()
    prediction = cost_model.report(reports, args.D)
    print(prediction["text"])
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "D": args.D,
                    "kernels": [r.summary(args.D) for r in reports],
                    "prediction": prediction["rows"],
                    "dtypes": DTYPE_NAMES,
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
