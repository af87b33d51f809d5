// CPU kernels of the contrastive core (semantics: csrc/README.md).
//
// Rows are split into blocks; each block streams column tiles, computes the tile of dot
// products with one BLAS GEMM into a small buffer, and folds it into per-row online
// log-sum-exp state. The backward visits every (row block, column tile) exactly once:
// grad_qn rows belong to one block, while grad_kn is accumulated into one partial per
// chunk of row blocks and summed in chunk order, so there are no atomics and repeated
// runs are bitwise equal.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "build_info.h"
#include "checks.h"
#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cpu/problem.h"
#include "cpu/row_kernels.h"
#include "cpu/self_similarity.h"

namespace fastcl::cpu {

using namespace math;

namespace {

int64_t row_block_size(int64_t M) {
  // Enough blocks for every thread to have two, so the last block does not leave a core idle.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_block = (M + 2 * threads - 1) / (2 * threads);
  return std::clamp<int64_t>((per_block + 15) / 16 * 16, 16, kMaxRowBlock);
}

template <typename acc_t>
void forward_rows(const Problem<acc_t>& p, const at::Tensor& qn, const at::Tensor& kn, int64_t r0,
                  int64_t r1, acc_t* loss, acc_t* lse, acc_t* num_pos) {
  const int64_t br = r1 - r0;
  at::Tensor buffer = at::empty({br * kColTile}, qn.options());
  std::vector<OnlineLSE<acc_t>> state(br);
  std::vector<acc_t> pos_sum(br, acc_t(0)), pos_count(br, acc_t(0));
  const at::Tensor q_block = qn.narrow(0, r0, br);
  for (int64_t c0 = 0; c0 < p.L; c0 += kColTile) {
    const int64_t bc = std::min(kColTile, p.L - c0);
    at::Tensor tile = tile_view(buffer, br, bc);
    at::mm_out(tile, q_block, kn.narrow(0, c0, bc).t());
    acc_t* s = tile.data_ptr<acc_t>();
    for (int64_t r = 0; r < br; ++r) {
      acc_t* row = s + r * bc;
      const int64_t i = r0 + r;
      scale_logits(p, i, c0, bc, row);
      finish_logits(p, i, c0, bc, row);
      acc_t count;
      pos_sum[r] += positive_sum(p, i, c0, bc, row, &count);
      pos_count[r] += count;
      const acc_t m = max_of(row, bc);
      if (m != neg_inf<acc_t>()) state[r].merge(m, sum_exp_shifted(row, bc, m));
    }
  }
  for (int64_t r = 0; r < br; ++r) {
    const int64_t i = r0 + r;
    lse[i] = state[r].value();
    num_pos[i] = pos_count[r];
    loss[i] = pos_count[r] > 0 ? lse[i] - pos_sum[r] / pos_count[r] : acc_t(0);
  }
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const Problem<acc_t>& p,
                                                            const at::Tensor& qn, const at::Tensor& kn) {
  const auto opts = qn.options();
  at::Tensor loss = at::empty({p.M}, opts), lse = at::empty({p.M}, opts), num_pos = at::empty({p.M}, opts);
  acc_t* loss_p = loss.data_ptr<acc_t>();
  acc_t* lse_p = lse.data_ptr<acc_t>();
  acc_t* pos_p = num_pos.data_ptr<acc_t>();
  const int64_t br = row_block_size(p.M);
  const int64_t blocks = (p.M + br - 1) / br;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      forward_rows(p, qn, kn, b * br, std::min(p.M, (b + 1) * br), loss_p, lse_p, pos_p);
    }
  });
  return {loss, lse, num_pos};
}

// One row block against columns [g0, g1): turns each dot-product tile into G (the gradient
// of the loss with respect to the logits), then adds G kn to grad_qn and G^T qn to the
// chunk's grad_kn partial. Returns this block's share of sum(G * dot).
template <typename acc_t>
double backward_rows(const Problem<acc_t>& p, const at::Tensor& qn, const at::Tensor& kn,
                     const acc_t* grad, const acc_t* lse, const acc_t* num_pos, int64_t r0, int64_t r1,
                     int64_t g0, int64_t g1, at::Tensor& buffer, at::Tensor& grad_qn,
                     at::Tensor& partial) {
  const int64_t br = r1 - r0;
  const at::Tensor q_block = qn.narrow(0, r0, br);
  at::Tensor grad_q_block = grad_qn.narrow(0, r0, br);
  std::vector<acc_t> logits(kColTile);
  double dscale = 0;
  for (int64_t c0 = g0; c0 < g1; c0 += kColTile) {
    const int64_t bc = std::min(kColTile, g1 - c0);
    at::Tensor tile = tile_view(buffer, br, bc);
    at::mm_out(tile, q_block, kn.narrow(0, c0, bc).t());
    acc_t* s = tile.data_ptr<acc_t>();
    for (int64_t r = 0; r < br; ++r) {
      const int64_t i = r0 + r;
      acc_t* dot = s + r * bc;
      const acc_t g = num_pos[i] > 0 ? grad[i] : acc_t(0);  // a row without positives has loss 0
      acc_t count;
      const acc_t pos_dot = num_pos[i] > 0 ? positive_sum(p, i, c0, bc, dot, &count) : acc_t(0);
      std::memcpy(logits.data(), dot, bc * sizeof(acc_t));
      scale_logits(p, i, c0, bc, logits.data());
      finish_logits(p, i, c0, bc, logits.data());
      // dot[j] <- g * softmax_ij, and the softmax-weighted sum of dots for the scale gradient.
      const acc_t weighted = softmax_grad_in_place(logits.data(), dot, bc, lse[i], g);
      dscale += static_cast<double>(weighted);
      if (num_pos[i] > 0) {
        const acc_t share = g / num_pos[i];
        dscale -= static_cast<double>(share * pos_dot);
        const int64_t label = p.row_labels[i];
        const int64_t self = p.exclude_self ? i + p.row_offset - c0 : -1;
        const int64_t* cl = p.col_labels + c0;
        for (int64_t j = 0; j < bc; ++j) {
          if (j != self && is_positive(label, cl[j])) dot[j] -= share;
        }
      }
    }
    grad_q_block.addmm_(tile, kn.narrow(0, c0, bc));
    const int64_t kc = std::clamp<int64_t>(p.grad_cols - c0, 0, bc);  // constant columns need no G^T qn
    if (kc > 0) partial.narrow(0, c0 - g0, kc).addmm_(tile.narrow(1, 0, kc).t(), q_block);
  }
  return dscale;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, acc_t> backward_impl(const Problem<acc_t>& p, const at::Tensor& qn,
                                                        const at::Tensor& kn, const at::Tensor& grad,
                                                        const at::Tensor& lse, const at::Tensor& num_pos) {
  const auto opts = qn.options();
  at::Tensor grad_qn = at::zeros({p.M, p.D}, opts);
  at::Tensor grad_kn = at::empty({p.L, p.D}, opts);
  grad_kn.narrow(0, p.grad_cols, p.L - p.grad_cols).zero_();
  const acc_t* grad_p = grad.data_ptr<acc_t>();
  const acc_t* lse_p = lse.data_ptr<acc_t>();
  const acc_t* pos_p = num_pos.data_ptr<acc_t>();

  const int64_t br = row_block_size(p.M);
  const int64_t blocks = (p.M + br - 1) / br;
  const int64_t chunks = std::min<int64_t>(blocks, std::max(1, at::get_num_threads()));
  // Columns per group, so that the chunks' grad_kn partials stay within the budget.
  const int64_t bytes_per_col = chunks * p.D * static_cast<int64_t>(sizeof(acc_t));
  int64_t group = std::max<int64_t>(kColTile, partial_budget() / std::max<int64_t>(1, bytes_per_col));
  group = std::min(p.L, group / kColTile * kColTile);
  at::Tensor partials = at::empty({chunks, std::max<int64_t>(group, 1), p.D}, opts);
  std::vector<at::Tensor> buffers;
  for (int64_t c = 0; c < chunks; ++c) buffers.push_back(at::empty({br * kColTile}, opts));
  std::vector<double> dscale(chunks, 0.0);

  for (int64_t g0 = 0; g0 < p.L; g0 += group) {
    const int64_t g1 = std::min(p.L, g0 + group);
    partials.zero_();
    // Chunks, not threads, own the partials, so the split does not depend on scheduling.
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        at::Tensor partial = partials[c];
        for (int64_t b = c * blocks / chunks; b < (c + 1) * blocks / chunks; ++b) {
          dscale[c] += backward_rows(p, qn, kn, grad_p, lse_p, pos_p, b * br, std::min(p.M, (b + 1) * br),
                                     g0, g1, buffers[c], grad_qn, partial);
        }
      }
    });
    const int64_t gk = std::min(g1, p.grad_cols) - g0;
    if (gk > 0) grad_kn.narrow(0, g0, gk).copy_(partials.narrow(1, 0, gk).sum(0));
  }
  double total = 0;
  for (double d : dscale) total += d;
  return {grad_qn.mul_(p.scale), grad_kn.mul_(p.scale), static_cast<acc_t>(total)};
}

// The problem's rows normalised once (the kernels take unit rows), and which kernel runs it.
struct Prepared {
  const ContrastiveArgs& a;
  at::ScalarType acc;
  Normalised qn, kn;
  bool self_path;
};

Prepared prepare(const ContrastiveArgs& a) {
  const at::ScalarType acc = loss_dtype(a.q.scalar_type());
  Normalised qn = normalise_rows(a.q, acc, a.normalize);
  Normalised kn = a.k.is_same(a.q) ? qn : normalise_rows(a.k, acc, a.normalize);
  const bool self_path = !a.has(kConstantCols) && !a.has(kHardness) &&
                         self_similarity_applies(a.q, a.k, a.row_labels, a.col_labels, a.row_ids, a.col_ids,
                                                 a.has(kColBias), a.row_offset, a.exclude_self, c10::elementSize(acc));
  return {a, acc, std::move(qn), std::move(kn), self_path};
}

template <typename acc_t>
Problem<acc_t> make_problem(const ContrastiveArgs& a) {
  const auto ids = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<int64_t>() : nullptr; };
  Problem<acc_t> p;
  p.M = a.M;
  p.L = a.L;
  p.D = a.D;
  p.row_offset = a.row_offset;
  p.exclude_self = a.exclude_self;
  p.row_labels = a.row_labels.data_ptr<int64_t>();
  p.col_labels = a.col_labels.data_ptr<int64_t>();
  p.bias = a.col_bias.defined() ? a.col_bias.data_ptr<acc_t>() : nullptr;
  p.bias_owner = ids(a.col_bias_owner);
  p.row_ids = ids(a.row_ids);
  p.col_ids = ids(a.col_ids);
  p.grad_cols = a.L - a.constant_cols;
  p.hardness = static_cast<acc_t>(a.hardness);
  p.hardness_mode = a.hardness_mode;
  p.scale = a.logit_scale.item<acc_t>();
  return p;
}

template <typename acc_t>
Triple forward_typed(const Prepared& pr) {
  const Problem<acc_t> p = make_problem<acc_t>(pr.a);
  return pr.self_path ? self_similarity_forward(p, pr.qn.rows) : forward_impl(p, pr.qn.rows, pr.kn.rows);
}

template <typename acc_t>
Triple backward_typed(const Prepared& pr, const at::Tensor& grad, const at::Tensor& lse, const at::Tensor& num_pos) {
  const ContrastiveArgs& a = pr.a;
  const Problem<acc_t> p = make_problem<acc_t>(a);
  const auto scalar = a.q.options().dtype(pr.acc);
  if (pr.self_path) {
    // q and k are one tensor: grad_q carries its whole gradient (csrc/README.md).
    auto [grad_zn, grad_scale] = self_similarity_backward(p, pr.qn.rows, grad, lse, num_pos);
    return {normalise_backward(grad_zn, pr.qn, a.normalize).to(a.q.scalar_type()), at::zeros_like(a.k),
            at::scalar_tensor(grad_scale, scalar)};
  }
  auto [grad_qn, grad_kn, grad_scale] = backward_impl(p, pr.qn.rows, pr.kn.rows, grad, lse, num_pos);
  return {normalise_backward(grad_qn, pr.qn, a.normalize).to(a.q.scalar_type()),
          normalise_backward(grad_kn, pr.kn, a.normalize).to(a.k.scalar_type()), at::scalar_tensor(grad_scale, scalar)};
}

Triple forward(const ContrastiveArgs& a) {
  const Prepared pr = prepare(a);
  return pr.acc == at::kDouble ? forward_typed<double>(pr) : forward_typed<float>(pr);
}

Triple backward(const ContrastiveArgs& a, const at::Tensor& grad_loss, const at::Tensor& lse,
                const at::Tensor& num_pos) {
  const Prepared pr = prepare(a);
  return pr.acc == at::kDouble ? backward_typed<double>(pr, grad_loss, lse, num_pos)
                               : backward_typed<float>(pr, grad_loss, lse, num_pos);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) {
  m.impl("contrastive_forward", &contrastive_forward_op<&forward>);
  m.impl("contrastive_backward", &contrastive_backward_op<&backward>);
}

}  // namespace fastcl::cpu

namespace fastcl {

std::string cpu_isa() { return cpu::row_kernels_isa(); }

}  // namespace fastcl
