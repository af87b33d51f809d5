"""The benchmark run log, benchmarks/data/runs.jsonl: every benchmark that runs appends one row (its
provenance: date, hardware, torch, fastcl, the git commit; its case; its median seconds and peak
memory), shaped as a pytest-benchmark JSON entry ({"extra_info": ..., "stats": {"median": ...}}),
so that report.py builds the RESULTS tables from the log as it does from one run's JSON:

    python benchmarks/report.py --runs benchmarks/data/runs.jsonl [--commit abc1234] [--since 2026-12-01]

FASTCL_BENCH_RUNS names another log file; FASTCL_BENCH_RUNS=off records nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parent
DEFAULT = ROOT / "data" / "runs.jsonl"
# What names a measurement rather than describing when and where it ran: rows agreeing on
# everything else measure the same thing, and the last one logged stands for it.
PROVENANCE = ("date", "commit", "torch", "fastcl", "peak_bytes")


def log_path() -> Optional[Path]:
    where = os.environ.get("FASTCL_BENCH_RUNS", "")
    if where.lower() == "off":
        return None
    return Path(where) if where else DEFAULT


def commit() -> str:
    """The checkout's short commit, with "-dirty" when tracked files differ from it ("unknown"
    outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def append(extra_info: dict, median_s: float, path: Optional[Path] = None) -> None:
    """One row for a finished benchmark (one line, appended: concurrent writers do not interleave)."""
    path = path or log_path()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"extra_info": extra_info, "stats": {"median": median_s}}
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def load(path: Path, commit: Optional[str] = None, since: Optional[str] = None) -> list:
    """The log's rows (optionally of one commit, or dated on or after `since`), the last of each
    measurement only."""
    latest = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            info = row["extra_info"]
            if commit is not None and not str(info.get("commit", "")).startswith(commit):
                continue
            if since is not None and str(info.get("date", "")) < since:
                continue
            latest[_measurement(info)] = row
    return list(latest.values())


def _measurement(info: dict) -> tuple:
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in info.items() if k not in PROVENANCE))


def as_report(rows: Iterable[dict]) -> dict:
    """Rows in the shape of pytest-benchmark's JSON, for report.table."""
    return {"benchmarks": list(rows)}
