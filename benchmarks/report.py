"""Turns pytest-benchmark JSON from the benchmark suites, or the run log every benchmark appends to
(benchmarks/data/runs.jsonl, runs.py), into markdown tables: median times, the speed-up and memory
ratio of fastcl over the baseline measured alongside.

    python benchmarks/report.py bench.json [--out table.md]
    python benchmarks/report.py --runs benchmarks/data/runs.jsonl [--commit abc1234] [--since 2026-12-01]"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import runs


def _mib(n):
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def augment_table(benches: list) -> str:
    """bench_augment.py rows: output images per second, and fastcl's ratio to each baseline."""
    rate = defaultdict(dict)
    for bench in benches:
        info = bench["extra_info"]
        rate[(info["device"], info["recipe"], info["in_size"], info["out_size"])][info["impl"]] = (
            info["images_per_call"] / bench["stats"]["median"])
    lines = ["| device | recipe | in -> out | fastcl img/s | torchvision per sample img/s | kornia img/s | "
             "fastcl / torchvision | fastcl / kornia |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for key in sorted(rate):
        row = rate[key]
        device, recipe, in_size, out_size = key
        fast = row.get("fastcl")

        def cell(name):
            return f"{row[name]:,.0f}" if name in row else "-"

        def ratio(name):
            return f"{fast / row[name]:.1f}x" if fast and name in row else "-"

        lines.append(f"| {device} | {recipe} | {in_size} -> {out_size} | {cell('fastcl')} | {cell('torchvision')} | "
                     f"{cell('kornia')} | {ratio('torchvision')} | {ratio('kornia')} |")
    return "\n".join(lines) + "\n"


def _by_case(benches: list) -> dict:
    """{(device, case, size): {impl: (median seconds, peak bytes)}} of bench_negatives / bench_integrations rows."""
    cells = defaultdict(dict)
    for bench in benches:
        info = bench["extra_info"]
        cells[(info["device"], info["case"], info["size"])][info["impl"]] = (bench["stats"]["median"],
                                                                             info.get("peak_bytes"))
    return cells


def negatives_table(benches: list) -> str:
    """bench_negatives.py rows: forward+backward time and peak memory of each implementation."""
    cells = _by_case(benches)
    lines = ["| device | case | 2N, or batch x queue | naive ms | fastcl ms | speed-up | naive peak MiB | fastcl peak MiB | "
             "fastcl without ids ms |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(cells):
        row = cells[key]
        if "naive" not in row or "fastcl" not in row:
            continue
        (t_n, m_n), (t_f, m_f) = row["naive"], row["fastcl"]
        plain = f"{row['fastcl_no_ids'][0] * 1e3:,.1f}" if "fastcl_no_ids" in row else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {t_n * 1e3:,.1f} | {t_f * 1e3:,.1f} | {t_n / t_f:.2f}x | "
                     f"{_mib(m_n)} | {_mib(m_f)} | {plain} |")
    return "\n".join(lines) + "\n"


def integrations_table(benches: list) -> str:
    """bench_integrations.py rows: each drop-in against the class it replaces."""
    cells = _by_case(benches)
    lines = ["| device | loss | size | original ms | fastcl ms | speed-up | original peak MiB | fastcl peak MiB | "
             "memory ratio |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(cells):
        row = cells[key]
        if "original" not in row or "fastcl" not in row:
            continue
        (t_o, m_o), (t_f, m_f) = row["original"], row["fastcl"]
        ratio = "n/a" if not m_f or m_o is None else f"{m_o / m_f:.0f}x less"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {t_o * 1e3:,.1f} | {t_f * 1e3:,.1f} | {t_o / t_f:.2f}x | "
                     f"{_mib(m_o)} | {_mib(m_f)} | {ratio} |")
    return "\n".join(lines) + "\n"


def table(data: dict) -> str:
    cells = defaultdict(dict)
    hardware = set()
    augment_rows = [b for b in data["benchmarks"] if b["extra_info"].get("bench") == "augment"]
    negatives_rows = [b for b in data["benchmarks"] if b["extra_info"].get("bench") == "negatives"]
    integration_rows = [b for b in data["benchmarks"] if b["extra_info"].get("bench") == "integrations"]
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        hardware.add(f"{info['hardware']}, torch {info['torch']}, fastcl {info['fastcl']}, {info['date']}"
                     + (f", commit {info['commit']}" if info.get('commit') else ""))
        if info.get("bench") in ("augment", "negatives", "integrations"):
            continue
        key = (info["device"], info["dtype"], info["passes"], info["rows"], info["dim"])
        cells[key][info["impl"]] = (bench["stats"]["median"], info.get("peak_bytes"))
    lines = ["Hardware: " + "; ".join(sorted(hardware)), ""]
    if augment_rows:
        lines.append(augment_table(augment_rows))
    if negatives_rows:
        lines.append(negatives_table(negatives_rows))
    if integration_rows:
        lines.append(integrations_table(integration_rows))
    if not cells:
        return "\n".join(lines)
    lines += ["| device | dtype | pass | 2N | D | naive ms | fastcl ms | speed-up | naive peak MiB | "
              "fastcl peak MiB | fastcl / naive memory |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(cells):
        row = cells[key]
        if "naive" not in row or "fastcl" not in row:
            continue
        (t_n, m_n), (t_f, m_f) = row["naive"], row["fastcl"]
        mem_ratio = "n/a" if not m_n or m_f is None else f"{100 * m_f / m_n:.1f}%"
        device, dtype, passes, rows, dim = key
        lines.append(f"| {device} | {dtype} | {passes} | {rows} | {dim} | {t_n * 1e3:,.1f} | {t_f * 1e3:,.1f} | "
                     f"{t_n / t_f:.2f}x | {_mib(m_n)} | {_mib(m_f)} | {mem_ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", nargs="?", help="a pytest-benchmark JSON file")
    parser.add_argument("--runs", help="the run log instead (the last row of each measurement)")
    parser.add_argument("--commit", help="with --runs: rows of this commit only")
    parser.add_argument("--since", help="with --runs: rows dated on or after this day (YYYY-MM-DD)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if (args.json is None) == (args.runs is None):
        parser.error("give a benchmark JSON file or --runs LOG")
    if args.runs:
        text = table(runs.as_report(runs.load(Path(args.runs), args.commit, args.since)))
    else:
        with open(args.json) as f:
            text = table(json.load(f))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
