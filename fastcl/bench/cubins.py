"""The CUDA kernels' machine code without a GPU: cubins compiled device-only from a csrc folder
(with the project's nvcc flags and `-Xptxas -v`), or extracted from a built fastcl._C, and the
NVIDIA tools that read them.

nvcc is the toolkit's (CUDA_HOME); nvdisasm and cuobjdump come from the toolkit when it has them,
else from the triton wheel that torch's CUDA builds install next to it."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "fastcl" / "csrc"


def tool(name: str) -> str:
    """Path of an NVIDIA tool (nvcc, nvdisasm, cuobjdump); FASTCL_<NAME> overrides the search."""
    override = os.environ.get(f"FASTCL_{name.upper()}")
    if override:
        return override
    places = []
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    places.append(os.path.join(home, "bin", name))
    try:
        import triton

        places.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    for place in places:
        if os.access(place, os.X_OK):
            return place
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name} not found (looked in {', '.join(places)} and PATH): install the CUDA toolkit, or "
        f"`pip install triton` (it ships nvdisasm and cuobjdump), or set FASTCL_{name.upper()}"
    )


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


@dataclass
class PtxasFunction:
    """What `ptxas -v` says of one function."""

    registers: int
    stack: int
    spill_stores: int
    spill_loads: int


_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_PTXAS_FUNC = re.compile(r"Function properties for (\S+)")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(text: str) -> dict[str, PtxasFunction]:
    """Per mangled function name, from the output of `ptxas -v` (nvcc -Xptxas -v)."""
    out: dict[str, PtxasFunction] = {}
    current, frame = None, (0, 0, 0)
    for line in text.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            current, frame = m.group(1), (0, 0, 0)
        elif m := _PTXAS_FUNC.search(line):
            current = current or m.group(1)
        elif (m := _PTXAS_FRAME.search(line)) and current:
            frame = tuple(int(g) for g in m.groups())
        elif (m := _PTXAS_REGS.search(line)) and current:
            out[current] = PtxasFunction(int(m.group(1)), *frame)
            current = None
    return out


def nvcc_flags(csrc: Path) -> list[str]:
    """The flags setup.py gives nvcc (fastcl/_build.py and torch's own), less the -gencode list."""
    from torch.utils import cpp_extension

    from .. import _build
    from ..version import __version__

    args, _ = _build.compile_args(True, __version__)
    includes = [f"-I{csrc}"] + [f"-I{p}" for p in cpp_extension.include_paths(device_type="cuda")]
    return ["-std=c++20", *cpp_extension.COMMON_NVCC_FLAGS, *args["nvcc"], *includes]


def compile_cubins(
    arch: str, csrc: Path = CSRC, workdir: Path | None = None, pattern: str = "*.cu"
) -> tuple[list[Path], dict[str, PtxasFunction]]:
    """Compiles each csrc/cuda/<pattern> device-only for sm_<arch> (e.g. "90"); cached by content.
    Returns the cubins and ptxas's per-function resource lines."""
    sources = sorted(Path(p) for p in glob.glob(str(csrc / "cuda" / pattern)))
    flags = nvcc_flags(csrc)
    digest = hashlib.sha256(" ".join(flags + [arch]).encode())
    for path in sorted(glob.glob(str(csrc / "**" / "*"), recursive=True)):
        if os.path.isfile(path) and "/sim/" not in path:
            digest.update(path.encode())
            digest.update(Path(path).read_bytes())
    workdir = Path(workdir or REPO / "build" / "sass") / f"sm_{arch}-{digest.hexdigest()[:12]}"
    workdir.mkdir(parents=True, exist_ok=True)
    cubins, ptxas_text = [], ""
    # One compiler per cache folder: processes that ask at once (pytest-xdist workers collecting the
    # SASS tests) wait for the first and then read its cubins.
    with FileLock(str(workdir) + ".lock"):
        for src in sources:
            cubin, log = workdir / f"{src.stem}.cubin", workdir / f"{src.stem}.ptxas.txt"
            if not (cubin.exists() and log.exists()):
                text = _run([tool("nvcc"), "-cubin", f"-gencode=arch=compute_{arch},code=sm_{arch}", *flags,
                             "-Xptxas", "-v", "-o", str(cubin), str(src)])
                log.write_text(text)
            cubins.append(cubin)
            ptxas_text += log.read_text()
    return cubins, parse_ptxas(ptxas_text)


def extract_cubins(library: Path, workdir: Path) -> list[Path]:
    """The cubins a built extension carries (`cuobjdump -xelf all`), e.g. fastcl/_C*.so."""
    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(workdir) + ".lock"):  # another process may be extracting into the same folder
        for old in workdir.glob("*.cubin"):
            old.unlink()
        _run([tool("cuobjdump"), "-xelf", "all", str(Path(library).resolve())], cwd=workdir)
        return sorted(workdir.glob("*.cubin"))


def built_library() -> Path | None:
    found = sorted(glob.glob(str(REPO / "fastcl" / "_C*.so")))
    return Path(found[0]) if found else None


@dataclass
class Resources:
    """Per function, from the cubin: registers, stack/local bytes (spills show here) and static shared."""

    registers: int
    stack: int
    local: int
    shared: int


def resource_usage(cubin: Path) -> dict[str, Resources]:
    out: dict[str, Resources] = {}
    name = None
    for line in _run([tool("cuobjdump"), "-res-usage", str(cubin)]).splitlines():
        if m := re.match(r"\s*Function (\S+):", line):
            name = m.group(1)
        elif name and "REG:" in line:
            fields = dict(re.findall(r"(\w+):(\d+)", line))
            out[name] = Resources(
                int(fields["REG"]),
                int(fields.get("STACK", 0)),
                int(fields.get("LOCAL", 0)),
                int(fields.get("SHARED", 0)),
            )
            name = None
    return out


def cubin_arch(cubin: Path) -> str:
    """sm_XX of a cubin, from cuobjdump's name (`_C.3.sm_90.cubin`) or nvdisasm's .target line."""
    if m := re.search(r"sm_(\d+a?)", cubin.name):
        return m.group(1)
    head = _run([tool("nvdisasm"), str(cubin)]).split("\n", 5)
    for line in head:
        if m := re.search(r"\.target\s+sm_(\d+a?)", line):
            return m.group(1)
    return "?"


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    done = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=False)
    lines = done.stdout.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else {n: n for n in names}
