"""SASS of a cubin as data: each function's instructions (nvdisasm), its loops (back edges), and
the instruction classes that decide a loss kernel's speed.

A loop is the address range from a branch target back to the last branch that jumps there.
Counting is static: both sides of a branch inside a loop count, so a kernel with runtime feature
branches reads as more instructions than it issues on any one path (an upper bound)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .cubins import _run, tool

# Instruction classes, by base opcode (the text before the first dot).
TENSOR = {"HMMA", "IMMA", "HGMMA", "DMMA", "BMMA", "QMMA", "OMMA"}
CLASSES = {
    "tensor": TENSOR,
    "ldsm": {"LDSM"},
    "generic": {"LD", "ST"},  # generic-address loads/stores: where shared memory is read as "LD.E"
    "local": {"LDL", "STL"},  # register spills (and indexed local arrays)
    "shared": {"LDS", "STS"},
    "global": {"LDG", "STG", "LDGSTS", "RED", "ATOMG"},
    "mufu": {"MUFU"},
    "barrier": {"BAR"},
    "shuffle": {"SHFL"},
    "movm": {"MOVM"},
    "ffma": {"FFMA"},
}
_CLASS_OF = {op: name for name, ops in CLASSES.items() for op in ops}
# Flops of one warp-wide tensor instruction, by shape.
_MMA_FLOPS = {"16816": 2 * 16 * 8 * 16, "1688": 2 * 16 * 8 * 8, "884": 2 * 8 * 8 * 4}


@dataclass
class Instr:
    addr: int
    opcode: str  # with modifiers, e.g. HMMA.16816.F32.BF16
    operands: str
    predicate: str = ""
    target: str | None = None  # a branch's label
    source: str = ""  # "path:line" the instruction came from (with -lineinfo builds)
    chain: tuple[str, ...] = ()  # source, then each call site it was inlined at, outwards

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def cls(self) -> str:
        return _CLASS_OF.get(self.base, "other")

    @property
    def mma_flops(self) -> int:
        if self.base not in TENSOR:
            return 0
        for shape, flops in _MMA_FLOPS.items():
            if f".{shape}" in self.opcode:
                return flops
        return 4096


@dataclass
class Loop:
    head: int  # index of the first instruction
    tail: int  # index of the last (the backward branch)
    parent: Loop | None = None
    children: list[Loop] = field(default_factory=list)

    def contains(self, i: int) -> bool:
        return self.head <= i <= self.tail

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth


@dataclass
class Function:
    name: str  # mangled
    instrs: list[Instr]
    labels: dict[str, int]  # label -> instruction index

    def loops(self) -> list[Loop]:
        """Natural loops from backward branches, merged per head, nested by containment (outer first)."""
        tails: dict[int, int] = {}
        for i, ins in enumerate(self.instrs):
            if ins.target is not None and ins.target in self.labels:
                head = self.labels[ins.target]
                if head <= i:
                    tails[head] = max(tails.get(head, i), i)
        loops = sorted((Loop(h, t) for h, t in tails.items()), key=lambda lp: (lp.head, -lp.tail))
        for lp in loops:
            enclosing = [o for o in loops if o is not lp and o.head <= lp.head and lp.tail <= o.tail]
            if enclosing:
                lp.parent = min(enclosing, key=lambda o: o.tail - o.head)
                lp.parent.children.append(lp)
        return loops

    def counts(self, lo: int = 0, hi: int | None = None) -> Counter:
        hi = len(self.instrs) - 1 if hi is None else hi
        c = Counter(ins.cls for ins in self.instrs[lo : hi + 1])
        c["all"] = hi + 1 - lo
        return c


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+|[A-Za-z_$][\w$.]*):\s*$")
_SECTION = re.compile(r"^\s*\.section\s+\.text\.(\S+?),")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_SOURCE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')


def parse_sass(text: str) -> dict[str, Function]:
    """nvdisasm's listing -> functions by mangled name."""
    funcs: dict[str, Function] = {}
    cur: Function | None = None
    # nvdisasm -gi writes an instruction's inline chain as consecutive "//##" lines, innermost first.
    chain: list[str] = []
    fresh = False
    for line in text.splitlines():
        if m := _SOURCE.search(line):
            if not fresh:
                chain, fresh = [], True
            chain.append(f"{m.group(1)}:{m.group(2)}")
            if m.group(3):
                chain.append(f"{m.group(3)}:{m.group(4)}")
            continue
        if m := _SECTION.match(line):
            cur = funcs.setdefault(m.group(1), Function(m.group(1), [], {}))
            continue
        if cur is None:
            continue
        stripped = line.strip()
        if m := _LABEL.match(stripped):
            cur.labels[m.group(1)] = len(cur.instrs)
            continue
        if m := _LINE.search(line):
            fresh = False
            pred, opcode, operands = (m.group(2) or "").strip(), m.group(3), m.group(4).strip()
            t = _TARGET.search(operands)
            cur.instrs.append(
                Instr(
                    int(m.group(1), 16),
                    opcode,
                    operands,
                    pred,
                    t.group(1) if t else None,
                    chain[0] if chain else "",
                    tuple(dict.fromkeys(chain)),
                )
            )
    return funcs


def disassemble(cubin: Path) -> dict[str, Function]:
    return parse_sass(_run([tool("nvdisasm"), "-c", "-gi", str(cubin)]))
