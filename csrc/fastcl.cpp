// The Python module fastcl._C and every op schema, defined once.
// Kernels live in cpu/*.cpp and cuda/*.cu and register with TORCH_LIBRARY_IMPL;
// the Python-side fake (meta) and autograd registrations live in fastcl/ops.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "build_info.h"

TORCH_LIBRARY(fastcl, m) {
  // The general contrastive core; csrc/README.md states its exact semantics.
  // Rows q (M, D) against columns k (L, D) -> per-row loss, log-sum-exp, positive count.
  m.def(
      "contrastive_forward(Tensor q, Tensor k, Tensor row_labels, Tensor col_labels, "
      "Tensor? col_bias, Tensor? col_bias_owner, Tensor logit_scale, int row_offset, "
      "bool exclude_self, bool normalize) -> (Tensor loss, Tensor lse, Tensor num_pos)");
  m.def(
      "contrastive_backward(Tensor grad_loss, Tensor q, Tensor k, Tensor row_labels, "
      "Tensor col_labels, Tensor? col_bias, Tensor? col_bias_owner, Tensor logit_scale, "
      "Tensor lse, Tensor num_pos, int row_offset, bool exclude_self, bool normalize) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_logit_scale)");
  // SimCLR batch augmentation: output sample p is images[source_index[p]] transformed by the
  // parameter row params[p] (layout: csrc/common/augment_math.h), resized to size x size.
  m.def(
      "augment(Tensor[] images, Tensor source_index, Tensor params, int size, int blur_kernel, "
      "Tensor? mean, Tensor? std, ScalarType out_dtype, bool channels_last) -> Tensor");
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
