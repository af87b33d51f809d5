// The Python module fastcl._C and the fastcl library of ops (schemas: schemas.h).
// Kernels live in cpu/*.cpp and cuda/*.cu and register with TORCH_LIBRARY_IMPL;
// the Python-side fake (meta) and autograd registrations live in fastcl/ops.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "build_info.h"
#include "schemas.h"

TORCH_LIBRARY(fastcl, m) {
  m.def(fastcl::schema::kContrastiveForward);
  m.def(fastcl::schema::kContrastiveBackward);
  m.def(fastcl::schema::kContrastivePairForward);
  m.def(fastcl::schema::kContrastivePairBackward);
  m.def(fastcl::schema::kAugment);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastcl compiled kernels; importing this module registers torch.ops.fastcl.*";
  m.def("build_info", []() {
    const fastcl::BuildInfo info = fastcl::build_info();
    pybind11::dict d;
    d["version"] = info.version;
    pybind11::list backends;
    for (const std::string& b : info.backends) backends.append(b);
    d["backends"] = backends;
    d["cuda_version"] = info.cuda_version;
    d["cuda_arch_list"] = info.cuda_arch_list;
    d["cpu_isa"] = info.cpu_isa;
    d["debug"] = info.debug;
    return d;
  });
}
