// The Python module fastcl._C and the fastcl library of ops (schemas: schemas.h).
// Kernels live in cpu/*.cpp and cuda/*.cu and register with TORCH_LIBRARY_IMPL;
// the Python-side fake (meta) and autograd registrations live in fastcl/ops.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "build_info.h"
#include "common/augment_math.h"
#include "common/contrastive_math.h"
#include "contrastive_args.h"
#include "schemas.h"

namespace {

// The constants Python mirrors (fastcl/problem.py, augment.py, integrations, bench), read from the
// headers that define them, so that tests/core/test_constants.py holds the two sides equal.
pybind11::dict constants() {
  namespace math = fastcl::math;
  pybind11::dict d;
  d["positive_only"] = math::kPositiveOnly;
  d["norm_eps"] = math::kNormEps;
  d["penalty_others"] = math::kPenaltyOthers;
  d["penalty_own"] = math::kPenaltyOwn;
  pybind11::dict features;
  features["col_bias"] = static_cast<int>(fastcl::kColBias);
  features["hardness"] = static_cast<int>(fastcl::kHardness);
  features["sample_ids"] = static_cast<int>(fastcl::kSampleIds);
  features["exclude_self"] = static_cast<int>(fastcl::kExcludeSelf);
  features["row_offset"] = static_cast<int>(fastcl::kRowOffset);
  features["constant_cols"] = static_cast<int>(fastcl::kConstantCols);
  features["normalize"] = static_cast<int>(fastcl::kNormalize);
  features["self_similarity"] = static_cast<int>(fastcl::kSelfSimilarity);
  d["features"] = features;
  pybind11::dict columns;
  columns["top"] = static_cast<int>(math::kTop);
  columns["left"] = static_cast<int>(math::kLeft);
  columns["height"] = static_cast<int>(math::kHeight);
  columns["width"] = static_cast<int>(math::kWidth);
  columns["flip"] = static_cast<int>(math::kFlip);
  columns["jitter"] = static_cast<int>(math::kJitter);
  columns["brightness"] = static_cast<int>(math::kBrightnessFactor);
  columns["contrast"] = static_cast<int>(math::kContrastFactor);
  columns["saturation"] = static_cast<int>(math::kSaturationFactor);
  columns["hue"] = static_cast<int>(math::kHueFactor);
  columns["order"] = static_cast<int>(math::kOrder0);
  columns["gray"] = static_cast<int>(math::kGray);
  columns["blur_sigma"] = static_cast<int>(math::kBlurSigma);
  columns["solarize"] = static_cast<int>(math::kSolarize);
  columns["angle"] = static_cast<int>(math::kAngle);
  columns["fill"] = static_cast<int>(math::kFill0);
  columns["num_params"] = static_cast<int>(math::kNumParams);
  d["augment_columns"] = columns;
  return d;
}

}  // namespace

TORCH_LIBRARY(fastcl, m) {
  m.def(fastcl::schema::kContrastiveForward);
  m.def(fastcl::schema::kContrastiveBackward);
  m.def(fastcl::schema::kContrastivePairForward);
  m.def(fastcl::schema::kContrastivePairBackward);
  m.def(fastcl::schema::kSiglipForward);
  m.def(fastcl::schema::kSiglipBackward);
  m.def(fastcl::schema::kSiglipForwardBackward);
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
  m.def("constants", &constants, "the constants the Python side mirrors");
}
