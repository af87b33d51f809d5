"""Loads the compiled ops: the ahead-of-time module fastcl._C, else a JIT build of the same
sources (torch.utils.cpp_extension.load, cached), else the pure-PyTorch path with one loud
warning. FASTCL_JIT=1 forces the JIT build; FASTCL_STRICT=1 makes any failure an error."""

from __future__ import annotations

import importlib
import os
import warnings

import torch

from .version import __version__

# "backends" is filled once at load so that has_cuda_ops() reads a plain tuple: torch.compile
# traces it inside the losses and cannot trace a call into the pybind module.
_state: dict = {"module": None, "source": None, "error": None, "backends": ()}


def _jit_build():
    from torch.utils import cpp_extension

    from . import _build

    with_cuda = _build.want_cuda() and torch.cuda.is_available()
    if with_cuda:
        os.environ.setdefault("CUDA_HOME", _build.cuda_home())
    compile_args, link_args = _build.compile_args(with_cuda, __version__)
    cache = os.environ.get("FASTCL_JIT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastcl", f"jit-{__version__}-torch{torch.__version__}"
        + ("-cuda" if with_cuda else "-cpu")
    )
    os.makedirs(cache, exist_ok=True)
    warnings.warn(f"fastcl: building the extension just in time into {cache} (first use only)", stacklevel=3)
    return cpp_extension.load(
        name="_C",
        sources=_build.sources(with_cuda),
        extra_include_paths=[_build.CSRC],
        extra_cflags=compile_args["cxx"],
        extra_cuda_cflags=compile_args.get("nvcc", []),
        extra_ldflags=link_args,
        build_directory=cache,
        with_cuda=with_cuda,
        verbose=os.environ.get("FASTCL_VERBOSE") == "1",
    )


def _loaded(module, source: str) -> None:
    _state["backends"] = tuple(module.build_info().get("backends", []))
    _state["module"], _state["source"] = module, source


def load() -> None:
    if _state["source"] is not None:
        return
    strict = os.environ.get("FASTCL_STRICT") == "1"
    errors = []
    if os.environ.get("FASTCL_JIT") != "1":
        try:
            _loaded(importlib.import_module("fastcl._C"), "aot")
            return
        except ImportError as exc:
            errors.append(f"fastcl._C: {exc}")
    try:
        _loaded(_jit_build(), "jit")
        return
    except Exception as exc:  # a failed compiler run raises RuntimeError, a missing one OSError
        errors.append(f"JIT build: {exc}")
    _state["source"] = "python"
    _state["error"] = "; ".join(errors)
    message = (
        "fastcl: the compiled kernels are unavailable, so fastcl runs its pure-PyTorch path "
        "(slow, materialises the similarity matrix). Reinstall with `pip install --no-build-isolation .` "
        f"or set FASTCL_JIT=1. Details: {_state['error']}"
    )
    if strict:
        raise RuntimeError(message + " (FASTCL_STRICT=1)")
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def has_ops() -> bool:
    load()
    return _state["source"] in ("aot", "jit")


def assert_has_ops() -> None:
    if not has_ops():
        raise RuntimeError(
            "fastcl: compiled ops are not available; install with `pip install --no-build-isolation .` "
            f"(with CUDA_HOME set for GPU kernels) or set FASTCL_JIT=1. Details: {_state['error']}"
        )


def has_cuda_ops() -> bool:
    return has_ops() and "cuda" in _state["backends"]


_warned: set = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn("fastcl: " + message, RuntimeWarning, stacklevel=3)


def build_info() -> dict:
    load()
    info = {"version": __version__, "source": _state["source"]}
    if _state["module"] is not None:
        info.update(_state["module"].build_info())
    else:
        info["backends"] = []
    return info
