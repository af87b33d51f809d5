"""What a run writes as it goes: metrics.jsonl (one JSON record per line), summary.json at the
end, and a progress bar on stderr. Only the main process writes."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable


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
        """Appends `record` with its wall-clock time (seconds since the epoch, as "time")."""
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def keep_only(self, keep: Callable[[dict], bool]) -> None:
        """Drops the records `keep` rejects: those written after the checkpoint a run resumes from
        belong to a run that did not get to save them."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            kept = [line for line in f if keep(json.loads(line))]
        with open(self.path, "w") as f:
            f.writelines(kept)


def write_summary(out: str, summary: dict, enabled: bool) -> None:
    if enabled:
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
