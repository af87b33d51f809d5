"""What a run writes as it goes: metrics.jsonl (one JSON record per line), summary.json at the
end, and a progress bar on stderr. Only the main process writes.

metrics.jsonl is append-only, so a kill or a full disk can cut its last line short: its readers
(`read_records`: resume, `fastcl plot`) drop such a line with a warning naming the file and line,
and refuse any other line that is not a JSON record, naming them too."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from typing import Callable

from . import files


def progress_bar(total: int, enabled: bool, **kwargs):
    """A tqdm bar on stderr: redrawn in place on a terminal, one line every 30 s in a log file
    (CI, nohup)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="step", leave=True, dynamic_ncols=True, disable=not enabled,
                mininterval=0.2 if sys.stderr.isatty() else 30, **kwargs)


class MetricsLog:
    """Appends records to OUT/metrics.jsonl. A fresh run starts the file over (`start_fresh`, once
    the trainer is fully set up, so a run that fails to start leaves the old log); a resumed run
    keeps what its checkpoint had seen (`keep_only`)."""

    def __init__(self, out: str, enabled: bool):
        self.path = os.path.join(out, "metrics.jsonl")
        self.enabled = enabled

    def start_fresh(self) -> None:
        """Removes a previous run's records (a new run, not a resumed one)."""
        if self.enabled and os.path.exists(self.path):
            os.remove(self.path)

    def log(self, **record) -> None:
        """Appends `record` with its wall-clock time (seconds since the epoch, as "time"); a write that
        fails (a full disk) raises files.WriteFailed, which stops the run."""
        if self.enabled:
            line = json.dumps({**record, "time": round(time.time(), 3)}) + "\n"
            files.append(self.path, line.encode(), note="; the run stopped (its last checkpoint is kept)")

    def keep_only(self, keep: Callable[[dict], bool]) -> None:
        """Drops the records `keep` rejects, and a torn last line: those written after the checkpoint
        a run resumes from belong to a run that did not get to save them. The file is replaced in
        one rename."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        kept = "".join(json.dumps(r) + "\n" for r in read_records(self.path) if keep(r))
        files.replace(self.path, lambda f: f.write(kept.encode()), suffix=".jsonl")


def read_records(path: str) -> list[dict]:
    """The records of a metrics.jsonl. A last line that is not a whole record (a write cut short)
    is dropped with a warning; any other such line is a ValueError naming the file and line."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines[:last + 1]):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i < last:
                raise ValueError(f"{path}, line {i + 1}: not a JSON record ({exc}); the file is corrupt, "
                                 "delete or mend that line") from None
            warnings.warn(f"{path}, line {i + 1}: an incomplete last record (a write cut short); ignored",
                          stacklevel=2)
            break
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {i + 1}: not a JSON object")
        records.append(record)
    return records


def write_summary(out: str, summary: dict, enabled: bool) -> None:
    if enabled:
        text = json.dumps(summary, indent=2)
        files.replace(os.path.join(out, "summary.json"), lambda f: f.write(text.encode()), suffix=".json")
