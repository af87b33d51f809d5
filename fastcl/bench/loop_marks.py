"""Trip counts of a kernel's loops, written in its source where the machine code cannot say them.

A loop's backward branch carries the line of its `for`; a comment on that line tells the SASS
report how often the loop runs per trip of the kernel's main loop:
  // sass: trips=4      a fixed count (a 16-step loop unrolled by 4)
  // sass: trips=D/BK   once per D chunk (the default for a loop that holds the tile's math)
  // sass: cold         a fallback that the common case never takes (weight 0)
A loop without a mark counts once (D/BK if it holds the math). A mark on an `if` line,
  // sass: rare         a branch the common case skips (masks on the few tiles that need them)
  // sass: share=1/8    a branch one warp of eight takes (work done once per block, not per warp)
(or on the `} else {` line of such a branch) applies to every instruction of the lines inside its
braces (an `if (...) {` line's own instructions, the condition's test, run every time), or
inlined from a call on one of them: a rare one is left out of the common-case counts (the report
gives their number apart), a shared one counts at its share. Sources of an older commit, which
carry no marks, borrow them from the line with the same code in this checkout's file of the same
name, so a calibration on old kernels counts them the same way."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from .cubins import CSRC

_MARK = re.compile(r"//\s*sass:\s*(cold|rare|share=1/\d+|trips=(\d+|D/BK))")


def _code(line: str) -> str:
    return re.sub(r"\s+", " ", line.split("//")[0]).strip()


@cache
def _lines(path: str) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text().splitlines())
    except OSError:
        return ()


@cache
def _marks_by_code(basename: str) -> dict[str, str]:
    """Marks of this checkout's file `basename` (under fastcl/csrc), by the code of their line."""
    out: dict[str, str] = {}
    for path in CSRC.rglob(basename):
        for line in _lines(str(path)):
            if m := _MARK.search(line):
                out[_code(line)] = m.group(1)
    return out


def mark_at(source: str) -> str | None:
    """'cold', 'trips=N', 'trips=D/BK' or None for the source location "path:line"."""
    path, _, line_no = source.rpartition(":")
    if not path or not line_no.isdigit():
        return None
    lines = _lines(path)
    n = int(line_no)
    if not 0 < n <= len(lines):
        return None
    if m := _MARK.search(lines[n - 1]):
        return m.group(1)
    if any(_MARK.search(line) for line in lines):
        return None  # a marked file: this line has no mark
    return _marks_by_code(Path(path).name).get(_code(lines[n - 1]))


def weight(mark: str | None, holds_math: bool) -> tuple[float, int]:
    """(factor, power of D/BK) a loop multiplies its instructions by."""
    if mark == "cold":
        return 0.0, 0
    if mark == "trips=D/BK" or (mark is None and holds_math):
        return 1.0, 1
    if mark and mark.startswith("trips="):
        return float(mark.split("=")[1]), 0
    return 1.0, 0


@cache
def _branch_ranges(path: str) -> tuple[tuple[int, int, float], ...]:
    """(first, last, factor) of each `// sass: rare` (factor 0) or `// sass: share=1/n` (1/n) branch
    of a file: its line to its closing brace."""
    lines, out = _lines(path), []
    for n, line in enumerate(lines):
        if not (m := _MARK.search(line)) or not (m.group(1) == "rare" or m.group(1).startswith("share=")):
            continue
        factor = 0.0 if m.group(1) == "rare" else 1.0 / int(m.group(1).split("/")[1])
        # From the marked line (less a leading "}" of "} else {") to the brace that closes it; a
        # marked line without "{" (a one-line if) is its own range. An `if (...) {` line's own
        # instructions test the condition, which every thread runs: the range starts below it.
        depth, end = 0, n
        first = line.split("//")[0].strip().removeprefix("}")
        start = n + 1 if first.startswith("if") and first.endswith("{") else n
        if "{" in first:
            for end in range(n, len(lines)):
                code = first if end == n else lines[end].split("//")[0]
                depth += code.count("{") - code.count("}")
                if depth <= 0:
                    break
        out.append((start + 1, end + 1, factor))
    return tuple(out)


def branch_factor(*sources: str) -> float:
    """How often an instruction at these "path:line" locations (its line and the call sites it was
    inlined at) runs in the common case, relative to its loop: 0 in a rare branch, the product of
    the shares of the shared branches around it, else 1."""
    factor, seen = 1.0, set()
    for source in sources:
        path, _, line_no = source.rpartition(":")
        if not (path and line_no.isdigit()):
            continue
        for first, last, f in _branch_ranges(path):
            if first <= int(line_no) <= last and (path, first) not in seen:
                seen.add((path, first))
                factor *= f
    return factor


def in_rare_branch(*sources: str) -> bool:
    """Whether any of these "path:line" locations lies in a `// sass: rare` branch."""
    return branch_factor(*sources) == 0.0
