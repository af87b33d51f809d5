// CPU kernels of the paired two-direction loss (semantics: csrc/README.md, contrastive_pair): rows
// a_i against every b_j and rows b_j against every a_i, the positive on the diagonal, as CLIP's
// symmetric loss. Both directions read one logit matrix, so each tile is formed once and serves
// its rows (a -> b) by row and its columns (b -> a) by column: four (M x M x D) products forward
// and backward where two calls of the general kernel run eight.
//
// Row blocks are split into contiguous chunks; a chunk keeps its own column statistics (forward)
// or b-gradient partial (backward), merged in chunk order, so results do not depend on scheduling.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "checks.h"
#include "common/online_lse.h"
#include "cpu/problem.h"
#include "cpu/row_kernels.h"
#include "normalise.h"

namespace fastcl::cpu {

using namespace math;

namespace {

constexpr int64_t kTile = kColTile;

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_typed(const at::Tensor& an, const at::Tensor& bn,
                                                                         acc_t scale) {
  const RowBlocks blocks(an.size(0));
  const int64_t M = blocks.M;
  std::vector<std::vector<OnlineLSE<acc_t>>> col_state(blocks.chunks, std::vector<OnlineLSE<acc_t>>(M));
  std::vector<OnlineLSE<acc_t>> row_state(M);
  std::vector<acc_t> diag(M);
  at::parallel_for(0, blocks.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::Tensor buffer = at::empty({kTile * kTile}, an.options());
    std::vector<acc_t> cmax(kTile), csum(kTile);
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t b = blocks.begin(c); b < blocks.end(c); ++b) {
        const int64_t i0 = b * kTile, bi = blocks.rows(b);
        for (int64_t j0 = 0; j0 < M; j0 += kTile) {
          const int64_t bj = std::min(kTile, M - j0);
          at::Tensor tile = tile_view(buffer, bi, bj);
          at::mm_out(tile, an.narrow(0, i0, bi), bn.narrow(0, j0, bj).t());
          acc_t* S = tile.data_ptr<acc_t>();
          scale_in_place(S, bi * bj, scale);
          std::fill(cmax.begin(), cmax.begin() + bj, neg_inf<acc_t>());
          std::fill(csum.begin(), csum.begin() + bj, acc_t(0));
          for (int64_t r = 0; r < bi; ++r) max_into(cmax.data(), S + r * bj, bj);
          for (int64_t r = 0; r < bi; ++r) {
            const acc_t* row = S + r * bj;
            add_exp_shifted_into(csum.data(), row, cmax.data(), bj);
            const acc_t m = max_of(row, bj);
            row_state[i0 + r].merge(m, sum_exp_shifted(row, bj, m));
            const int64_t d = i0 + r - j0;
            if (d >= 0 && d < bj) diag[i0 + r] = row[d];
          }
          for (int64_t k = 0; k < bj; ++k) col_state[c][j0 + k].merge(cmax[k], csum[k]);
        }
      }
    }
  });
  const auto opts = an.options();
  at::Tensor loss_a = at::empty({M}, opts), lse_a = at::empty({M}, opts);
  at::Tensor loss_b = at::empty({M}, opts), lse_b = at::empty({M}, opts);
  acc_t *la = loss_a.data_ptr<acc_t>(), *sa = lse_a.data_ptr<acc_t>();
  acc_t *lb = loss_b.data_ptr<acc_t>(), *sb = lse_b.data_ptr<acc_t>();
  for (int64_t i = 0; i < M; ++i) {
    OnlineLSE<acc_t> column;
    for (const auto& state : col_state) column.merge(state[i].m, state[i].l);
    sa[i] = row_state[i].value();
    sb[i] = column.value();
    la[i] = sa[i] - diag[i];
    lb[i] = sb[i] - diag[i];
  }
  return {loss_a, lse_a, loss_b, lse_b};
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, acc_t> backward_typed(const at::Tensor& an, const at::Tensor& bn, acc_t scale,
                                                          const acc_t* g_a, const acc_t* g_b, const acc_t* lse_a,
                                                          const acc_t* lse_b) {
  const RowBlocks blocks(an.size(0));
  const int64_t M = blocks.M, D = an.size(1);
  at::Tensor grad_a = at::zeros({M, D}, an.options());
  at::Tensor partials = at::zeros({blocks.chunks, M, D}, an.options());
  std::vector<double> dscale(blocks.chunks, 0.0);
  at::parallel_for(0, blocks.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::Tensor dots = at::empty({kTile * kTile}, an.options());
    at::Tensor hbuf = at::empty({kTile * kTile}, an.options());
    std::vector<acc_t> logits(kTile);
    for (int64_t c = c_begin; c < c_end; ++c) {
      at::Tensor partial = partials[c];
      for (int64_t b = blocks.begin(c); b < blocks.end(c); ++b) {
        const int64_t i0 = b * kTile, bi = blocks.rows(b);
        const at::Tensor a_blk = an.narrow(0, i0, bi);
        at::Tensor grad_blk = grad_a.narrow(0, i0, bi);
        for (int64_t j0 = 0; j0 < M; j0 += kTile) {
          const int64_t bj = std::min(kTile, M - j0);
          const at::Tensor b_tile = bn.narrow(0, j0, bj);
          at::Tensor dot_tile = tile_view(dots, bi, bj), h_tile = tile_view(hbuf, bi, bj);
          at::mm_out(dot_tile, a_blk, b_tile.t());
          const acc_t* S = dot_tile.data_ptr<acc_t>();
          acc_t* H = h_tile.data_ptr<acc_t>();
          double tile_dscale = 0;
          for (int64_t r = 0; r < bi; ++r) {
            const int64_t i = i0 + r;
            const acc_t* dot = S + r * bj;
            acc_t* h = H + r * bj;
            std::memcpy(logits.data(), dot, bj * sizeof(acc_t));
            scale_in_place(logits.data(), bj, scale);
            // h = G_ij: row i's softmax over b (a -> b) plus column j's over a (b -> a).
            softmax_grad_row(logits.data(), h, bj, lse_a[i], g_a[i]);
            softmax_grad_cols_add(logits.data(), h, bj, lse_b + j0, g_b + j0);
            const int64_t d = i - j0;
            if (d >= 0 && d < bj) h[d] -= g_a[i] + g_b[i];
            tile_dscale += static_cast<double>(dot_of(h, dot, bj));
          }
          dscale[c] += tile_dscale;
          grad_blk.addmm_(h_tile, b_tile);
          partial.narrow(0, j0, bj).addmm_(h_tile.t(), a_blk);
        }
      }
    }
  });
  double total = 0;
  for (double d : dscale) total += d;
  return {grad_a.mul_(scale), partials.sum(0).mul_(scale), static_cast<acc_t>(total)};
}

at::ScalarType prepare(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale) {
  check_pair_args(a, b, logit_scale);
  return loss_dtype(a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pair_forward_cpu(const at::Tensor& a, const at::Tensor& b,
                                                                            const at::Tensor& logit_scale,
                                                                            bool normalize) {
  const at::ScalarType acc = prepare(a, b, logit_scale);
  const Normalised an = normalise_rows(a, acc, normalize), bn = normalise_rows(b, acc, normalize);
  return acc == at::kDouble ? forward_typed<double>(an.rows, bn.rows, logit_scale.item<double>())
                            : forward_typed<float>(an.rows, bn.rows, logit_scale.item<float>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_backward_cpu(const at::Tensor& grad_a, const at::Tensor& grad_b,
                                                                 const at::Tensor& a, const at::Tensor& b,
                                                                 const at::Tensor& logit_scale,
                                                                 const at::Tensor& lse_a, const at::Tensor& lse_b,
                                                                 bool normalize) {
  const at::ScalarType acc = prepare(a, b, logit_scale);
  check_pair_backward_args(a, grad_a, grad_b, lse_a, lse_b);
  const Normalised an = normalise_rows(a, acc, normalize), bn = normalise_rows(b, acc, normalize);
  const at::Tensor ga = grad_a.contiguous(), gb = grad_b.contiguous(), sa = lse_a.contiguous(), sb = lse_b.contiguous();
  const auto run = [&](auto zero) {
    using acc_t = decltype(zero);
    auto [grad_an, grad_bn, dscale] =
        backward_typed<acc_t>(an.rows, bn.rows, logit_scale.item<acc_t>(), ga.data_ptr<acc_t>(), gb.data_ptr<acc_t>(),
                              sa.data_ptr<acc_t>(), sb.data_ptr<acc_t>());
    return std::make_tuple(normalise_backward(grad_an, an, normalize).to(a.scalar_type()),
                           normalise_backward(grad_bn, bn, normalize).to(b.scalar_type()),
                           at::scalar_tensor(dscale, a.options().dtype(acc)));
  };
  return acc == at::kDouble ? run(double(0)) : run(float(0));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) {
  m.impl("contrastive_pair_forward", &pair_forward_cpu);
  m.impl("contrastive_pair_backward", &pair_backward_cpu);
}

}  // namespace fastcl::cpu
