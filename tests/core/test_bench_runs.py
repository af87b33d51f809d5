"""The benchmark run log (benchmarks/runs.py) and the tables report.py builds from it: rows appended
per benchmark with their commit, the last row of each measurement standing for it, filters by commit
and date, and a whole pytest-benchmark session appending its rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import report  # noqa: E402
import runs  # noqa: E402


def _info(impl, rows, date="2026-12-07", commit="aaa1111", peak=1 << 20):
    return dict(device="cpu", hardware="test cpu", torch="2.14.1", fastcl="0.1.0", date=date, commit=commit,
                dtype="float32", passes="fwd+bwd", rows=rows, dim=128, impl=impl, peak_bytes=peak)


def test_the_last_row_of_a_measurement_stands_for_it(tmp_path):
    log = tmp_path / "runs.jsonl"
    runs.append(_info("naive", 4096), 0.4, log)
    runs.append(_info("fastcl", 4096), 0.2, log)
    runs.append(_info("fastcl", 4096, date="2026-12-08", commit="bbb2222"), 0.1, log)  # a later run, same case
    runs.append(_info("fastcl", 8192, commit="bbb2222"), 0.5, log)
    rows = runs.load(log)
    assert len(rows) == 3
    fast = [r for r in rows if r["extra_info"]["impl"] == "fastcl" and r["extra_info"]["rows"] == 4096]
    assert [r["stats"]["median"] for r in fast] == [0.1]
    assert {r["extra_info"]["commit"] for r in runs.load(log, commit="bbb")} == {"bbb2222"}
    assert len(runs.load(log, since="2026-12-08")) == 1
    text = report.table(runs.as_report(rows))
    assert "| cpu | float32 | fwd+bwd | 4096 | 128 | 400.0 | 100.0 | 4.00x |" in text
    assert "commit bbb2222" in text and "commit aaa1111" in text


def test_report_reads_the_log_from_the_command_line(tmp_path, capsys):
    log = tmp_path / "runs.jsonl"
    runs.append(_info("naive", 4096), 0.3, log)
    runs.append(_info("fastcl", 4096), 0.1, log)
    report.main(["--runs", str(log)])
    assert "3.00x" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report.main([])


def test_off_records_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCL_BENCH_RUNS", "off")
    assert runs.log_path() is None
    runs.append(_info("naive", 1), 1.0)  # no file anywhere
    monkeypatch.setenv("FASTCL_BENCH_RUNS", str(tmp_path / "x.jsonl"))
    assert runs.log_path() == tmp_path / "x.jsonl"
    assert runs.commit() != "unknown"  # this is a checkout


def test_a_benchmark_session_appends_its_rows(tmp_path):
    """One real benchmark (the smallest augmentation case) through pytest-benchmark: its row lands in
    the log with the commit."""
    log = tmp_path / "runs.jsonl"
    # Not as an xdist worker: pytest-benchmark disables itself when it sees PYTEST_XDIST_* set.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["FASTCL_BENCH_RUNS"] = str(log)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           str(REPO / "benchmarks" / "bench_ntxent.py"), "-k", "cpu and float32 and 1024 and fwd and not bwd",
           "--benchmark-min-rounds=1", "--benchmark-max-time=0.01", "--benchmark-warmup=off"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows and all(r["extra_info"]["commit"] == runs.commit() for r in rows)
    assert all(r["stats"]["median"] > 0 for r in rows)
