// The op schemas, written once: fastcl.cpp defines them for the library fastcl, and the test-only
// simulator module (tests/sim/sim_kernels/fastcl_sim_ops.cpp) for fastcl_sim, whose CPU kernels are
// the CUDA sources run by the CPU simulator of csrc/sim.
#pragma once

namespace fastcl::schema {

// The general contrastive core; csrc/README.md states its exact semantics.
// Rows q (M, D) against columns k (L, D) -> per-row loss, log-sum-exp, positive count. row_ids (M,)
// and col_ids (L,), both or neither, mask duplicate pairs (common/contrastive_math.h). The last
// constant_cols columns are constants (a queue): the backward returns zeros for them and skips their work.
// hardness, hardness_mode: a detached hardness * dot added to the pairs the mode selects (contrastive_math.h).
constexpr const char* kContrastiveForward =
    "contrastive_forward(Tensor q, Tensor k, Tensor row_labels, Tensor col_labels, "
    "Tensor? col_bias, Tensor? col_bias_owner, Tensor? row_ids, Tensor? col_ids, Tensor logit_scale, "
    "int row_offset, bool exclude_self, bool normalize, int constant_cols=0, float hardness=0., "
    "int hardness_mode=0) -> (Tensor loss, Tensor lse, Tensor num_pos)";
constexpr const char* kContrastiveBackward =
    "contrastive_backward(Tensor grad_loss, Tensor q, Tensor k, Tensor row_labels, "
    "Tensor col_labels, Tensor? col_bias, Tensor? col_bias_owner, Tensor? row_ids, Tensor? col_ids, "
    "Tensor logit_scale, Tensor lse, Tensor num_pos, int row_offset, bool exclude_self, bool normalize, "
    "int constant_cols=0, float hardness=0., int hardness_mode=0) "
    "-> (Tensor grad_q, Tensor grad_k, Tensor grad_logit_scale)";
// The paired two-direction loss (CLIP's symmetric loss): a (M, D) against b (M, D) and b against a,
// the positive on the diagonal -> per-row losses and log-sum-exps of both directions.
constexpr const char* kContrastivePairForward =
    "contrastive_pair_forward(Tensor a, Tensor b, Tensor logit_scale, bool normalize) "
    "-> (Tensor loss_a, Tensor lse_a, Tensor loss_b, Tensor lse_b)";
constexpr const char* kContrastivePairBackward =
    "contrastive_pair_backward(Tensor grad_loss_a, Tensor grad_loss_b, Tensor a, Tensor b, Tensor logit_scale, "
    "Tensor lse_a, Tensor lse_b, bool normalize) -> (Tensor grad_a, Tensor grad_b, Tensor grad_logit_scale)";
// The sigmoid loss (SigLIP): rows a (M, D) against columns b (L, D), logit scale * <a_i, b_j> + bias; the
// pair (i, j) is positive when j == i + offset (none when out of range: a chunk of another rank's keys)
// or, with a_ids (M,) and b_ids (L,) (both or neither), when they share an id >= 0; every other pair
// is negative -> (1 / M) sum_ij softplus(-y_ij logit_ij) (0-dim), and its gradients with respect to a,
// b, the scale and the bias (csrc/README.md, siglip).
constexpr const char* kSiglipForward =
    "siglip_forward(Tensor a, Tensor b, Tensor logit_scale, Tensor logit_bias, bool normalize, "
    "Tensor? a_ids=None, Tensor? b_ids=None, int offset=0) -> Tensor";
constexpr const char* kSiglipBackward =
    "siglip_backward(Tensor grad_loss, Tensor a, Tensor b, Tensor logit_scale, Tensor logit_bias, bool normalize, "
    "Tensor? a_ids=None, Tensor? b_ids=None, int offset=0) "
    "-> (Tensor grad_a, Tensor grad_b, Tensor grad_logit_scale, Tensor grad_logit_bias)";
// Both in one pass (training on the CPU): the loss and its gradients for grad_loss = 1, the row
// gradients in the loss dtype; autograd scales them by grad_loss (fastcl/ops.py).
constexpr const char* kSiglipForwardBackward =
    "siglip_forward_backward(Tensor a, Tensor b, Tensor logit_scale, Tensor logit_bias, bool normalize, "
    "Tensor? a_ids=None, Tensor? b_ids=None, int offset=0) "
    "-> (Tensor loss, Tensor grad_a, Tensor grad_b, Tensor grad_logit_scale, Tensor grad_logit_bias)";
// SimCLR batch augmentation: output sample p is images[source_index[p]] transformed by the
// parameter row params[p] (layout: csrc/common/augment_math.h), resized to size x size.
constexpr const char* kAugment =
    "augment(Tensor[] images, Tensor source_index, Tensor params, int size, int blur_kernel, "
    "Tensor? mean, Tensor? std, ScalarType out_dtype, bool channels_last) -> Tensor";

}  // namespace fastcl::schema
