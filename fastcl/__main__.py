"""Command line: `python -m fastcl info` (build information) and `python -m fastcl demo`."""

from __future__ import annotations

import argparse
import sys


def _info(_args) -> int:
    import torch

    import fastcl

    info = fastcl.build_info()
    lines = [
        ("fastcl", info["version"]),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none"),
        ("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"),
        ("kernels from", {"aot": "fastcl._C (ahead-of-time build)", "jit": "JIT build cache",
                          "python": "pure-PyTorch fallback (no compiled kernels)"}[info["source"]]),
        ("backends", ", ".join(info.get("backends", [])) or "none"),
        ("CUDA arch list", info.get("cuda_arch_list") or "-"),
        ("CPU vector ISA", info.get("cpu_isa", "-")),
        ("debug build", str(info.get("debug", False))),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def _demo(args) -> int:
    from .demo import run

    return run(sizes=args.sizes, dim=args.dim, repeats=args.repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastcl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, compiled backends and build settings").set_defaults(func=_info)
    demo = sub.add_parser("demo", help="fastcl vs the pure-PyTorch NT-Xent loss: time, memory, difference")
    demo.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], help="values of 2N")
    demo.add_argument("--dim", type=int, default=128)
    demo.add_argument("--repeats", type=int, default=3)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
