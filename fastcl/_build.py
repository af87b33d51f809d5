"""Build configuration shared by setup.py (ahead of time) and the JIT loader.

Loaded by setup.py straight from its file (the package is not importable before it is
built), so it imports nothing from fastcl. Knobs: FASTCL_FORCE_CUDA, CUDA_HOME,
TORCH_CUDA_ARCH_LIST, MAX_JOBS (read by torch), FASTCL_DEBUG.
"""

from __future__ import annotations

import glob
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")  # inside the package, so an installed fastcl can JIT-build too
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # Ampere and Hopper machine code, PTX for newer GPUs


def _flag(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None or value == "" else value


def cuda_home() -> str | None:
    home = _flag("CUDA_HOME") or _flag("CUDA_PATH")
    if home is None and os.path.exists("/usr/local/cuda"):
        home = "/usr/local/cuda"
    if home is None:
        nvcc = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    return home


def want_cuda() -> bool:
    """FASTCL_FORCE_CUDA=1 forces the CUDA sources, =0 forbids them; unset: when nvcc exists."""
    import torch

    force = _flag("FASTCL_FORCE_CUDA")
    if force is not None:
        if force not in ("0", "1"):
            raise ValueError(f"FASTCL_FORCE_CUDA must be 0 or 1, got {force!r}")
        if force == "1" and torch.version.cuda is None:
            raise RuntimeError("FASTCL_FORCE_CUDA=1 but this torch build has no CUDA support")
        return force == "1"
    home = cuda_home()
    return torch.version.cuda is not None and home is not None and os.path.exists(
        os.path.join(home, "bin", "nvcc")
    )


def debug() -> bool:
    return _flag("FASTCL_DEBUG") == "1"


def arch_list() -> str:
    """The arch list torch will compile for; set it in the environment so torch reads the same."""
    import torch

    chosen = _flag("TORCH_CUDA_ARCH_LIST")
    if chosen is None and not torch.cuda.is_available():
        chosen = DEFAULT_ARCH_LIST  # no GPU to read the arch off: build the supported range
        os.environ["TORCH_CUDA_ARCH_LIST"] = chosen
    if chosen is None:
        major, minor = torch.cuda.get_device_capability()
        chosen = f"{major}.{minor}"
    return chosen


def sources(with_cuda: bool) -> list[str]:
    found = [os.path.join(CSRC, "fastcl.cpp"), os.path.join(CSRC, "checks.cpp")]
    found += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    if with_cuda:
        found += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    return found


def cuda_library_includes() -> list[str]:
    """Header folders of the CUDA libraries torch's pip wheels carry (nvidia/cu13/include...),
    for toolkits that lack some of them (cusparse.h, which torch's CUDA headers include)."""
    home = cuda_home()
    if home and os.path.exists(os.path.join(home, "include", "cusparse.h")):
        return []
    try:
        import nvidia  # the namespace package of NVIDIA's pip wheels
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += sorted(glob.glob(os.path.join(root, "*", "include")))
    return [d for d in found if os.path.exists(os.path.join(d, "cusparse.h"))]


def headers() -> list[str]:
    found = []
    for pattern in ("*.h", "*/*.h", "*/*.cuh"):
        found += glob.glob(os.path.join(CSRC, pattern))
    return sorted(found)


def compile_args(with_cuda: bool, version: str) -> tuple[dict[str, list[str]], list[str]]:
    """(extra_compile_args, extra_link_args). No nvcc flag may contain 'arch': torch would
    then drop its own -gencode flags built from TORCH_CUDA_ARCH_LIST."""
    import torch

    opt = ["-O0", "-g"] if debug() else ["-O3"]
    # Values travel unquoted (the JIT path would strip the quotes) and are stringised in build_info.h.
    defines = [f"-DFASTCL_VERSION_RAW={version}"]
    if debug():
        defines.append("-DFASTCL_DEBUG")
    if with_cuda:
        # nvcc splits option values at commas, so the list travels as 8.0/9.0+PTX.
        arches = "/".join(arch_list().replace(";", " ").split())
        defines += ["-DWITH_CUDA", f"-DFASTCL_CUDA_ARCH_LIST_RAW={arches}",
                    f"-DFASTCL_CUDA_VERSION_RAW={torch.version.cuda}"]
    # No trapping math: lets the compiler if-convert and vectorise the clamps in the row loops.
    # No contraction: the augmentation must round each product and sum as torch's tensor ops do.
    cxx = opt + defines + ["-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off",
                           "-Wno-unused-function"]
    args = {"cxx": cxx}
    if with_cuda:
        # -isystem: searched after the toolkit's own -I folder, so only missing headers come from there.
        extra = [f"-isystem={d}" for d in cuda_library_includes()]
        args["nvcc"] = opt + defines + ["-lineinfo", "--expt-relaxed-constexpr"] + extra
    return args, ["-fopenmp"]


def describe(with_cuda: bool) -> str:
    import torch

    lines = [
        f"torch {torch.__version__} (CUDA {torch.version.cuda})",
        f"build CUDA kernels: {with_cuda} (FASTCL_FORCE_CUDA={_flag('FASTCL_FORCE_CUDA')})",
        f"CUDA_HOME: {cuda_home()}",
        f"TORCH_CUDA_ARCH_LIST: {arch_list() if with_cuda else '(unused)'}",
        f"MAX_JOBS: {_flag('MAX_JOBS')}",
        f"FASTCL_DEBUG: {debug()}",
    ]
    return "\n".join("fastcl build: " + line for line in lines)
