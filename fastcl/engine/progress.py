"""A line on stderr every few seconds while a long command works (`fastcl knn`, `neighbours`,
`sts-eval`, `label-efficiency`), so that 20-30 s of silence never looks like a hang:

    fastcl knn: encoding the training images (trained encoder): 3,584 / 7,168 (14 s)

The command opens one `heartbeat`; the code it calls says what it is doing with `note(text)` and
how far with `count(done, total)`: each an assignment, shown only while a heartbeat is open."""

from __future__ import annotations

import contextlib
import sys
import threading
import time

EVERY = 5.0  # seconds between lines
_current = {"text": None, "count": ""}


def note(text: str) -> None:
    """What the command is doing now, for the next line of the open heartbeat (if any)."""
    _current["text"], _current["count"] = text, ""


def count(done: int, total: int, unit: str = "") -> None:
    """How far the current step is (`unit`s done of total), shown after the note."""
    _current["count"] = f": {done:,} / {total:,}" + (f" {unit}" if unit else "")


@contextlib.contextmanager
def heartbeat(command: str, enabled: bool = True, every: float | None = None):
    """While the block runs, `fastcl COMMAND: <last note> (<seconds> s)` on stderr every `every`
    seconds (default EVERY), from a daemon thread; nothing when not enabled."""
    if not enabled:
        yield
        return
    stop, start = threading.Event(), time.monotonic()
    note("starting")

    def beat():
        while not stop.wait(EVERY if every is None else every):
            seconds = time.monotonic() - start
            line = f"fastcl {command}: {_current['text']}{_current['count']} ({seconds:.0f} s)"
            print(line, file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name=f"fastcl {command} progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        note(None)
