"""Builds the one extension fastcl._C (CPU kernels always, CUDA kernels when enabled).

Knobs (see fastcl/_build.py): FASTCL_FORCE_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS,
FASTCL_DEBUG. Install with `pip install --no-build-isolation .` (or `-e .`) so the build
uses the torch already installed.
"""

import importlib.util
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load("fastcl_build", "fastcl/_build.py")
version = _load("fastcl_version", "fastcl/version.py").__version__

with_cuda = build.want_cuda()
if with_cuda:
    os.environ.setdefault("CUDA_HOME", build.cuda_home())

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

print(build.describe(with_cuda), flush=True)
compile_args, link_args = build.compile_args(with_cuda, version)
sources = [os.path.relpath(s, HERE) for s in build.sources(with_cuda)]
Extension = CUDAExtension if with_cuda else CppExtension
extension = Extension(
    name="fastcl._C",
    sources=sources,
    include_dirs=[build.CSRC],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    version=version,
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
