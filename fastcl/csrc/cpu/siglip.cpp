// CPU kernels of the sigmoid loss (SigLIP; semantics: csrc/README.md, siglip): rows a_i (M) against
// columns b_j (L), logit z_ij = scale * <a_i, b_j> + bias, loss = (1 / M) sum_ij softplus(-y_ij z_ij)
// with y_ij = +1 on the pairs math::is_siglip_positive names (the diagonal shifted by an offset, none
// for a chunk of another rank's keys; pairs sharing a sample id) and -1 elsewhere. Each logit's loss
// and gradient depend on that logit alone, so a tile needs no statistics of other tiles: the forward
// sums the tiles' losses, the backward recomputes each tile and feeds its gradient straight into the
// two products.
//
// Row blocks are split into contiguous chunks; a chunk keeps its own loss sum (forward) or
// b-gradient partial and scalar sums (backward), merged in chunk order, so results do not depend
// on scheduling. Neither pass holds more than one 256 x 256 tile per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "common/sigmoid_math.h"
#include "cpu/problem.h"
#include "normalise.h"

namespace fastcl::cpu {

namespace {

constexpr int64_t kTile = kColTile;

// Which pairs are positive (math::is_siglip_positive), with the scalars every tile needs.
template <typename acc_t>
struct Pairs {
  acc_t scale, bias;
  int64_t offset;
  const int64_t* row_ids;  // nullptr: no sample ids
  const int64_t* col_ids;
  bool positive(int64_t i, int64_t j) const { return math::is_siglip_positive(i, j, offset, row_ids, col_ids); }
};

// Sum of the pair losses of one tile: rows i0 + r against columns j0 + k, dots in S (bi x bj).
template <typename acc_t>
double tile_loss(const acc_t* S, int64_t i0, int64_t bi, int64_t j0, int64_t bj, const Pairs<acc_t>& p) {
  double total = 0;
  for (int64_t r = 0; r < bi; ++r) {
    const acc_t* dot = S + r * bj;
    acc_t row = 0;
    for (int64_t k = 0; k < bj; ++k) {
      row += math::sigmoid_pair_loss(p.scale * dot[k] + p.bias, p.positive(i0 + r, j0 + k));
    }
    total += static_cast<double>(row);
  }
  return total;
}

template <typename acc_t>
double forward_typed(const at::Tensor& an, const at::Tensor& bn, const Pairs<acc_t>& p) {
  const RowBlocks blocks(an.size(0));
  const int64_t M = blocks.M, L = bn.size(0);
  std::vector<double> partial(blocks.chunks, 0.0);
  at::parallel_for(0, blocks.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::Tensor buffer = at::empty({kTile * kTile}, an.options());
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t b = blocks.begin(c); b < blocks.end(c); ++b) {
        const int64_t i0 = b * kTile, bi = blocks.rows(b);
        for (int64_t j0 = 0; j0 < L; j0 += kTile) {
          const int64_t bj = std::min(kTile, L - j0);
          at::Tensor tile = tile_view(buffer, bi, bj);
          at::mm_out(tile, an.narrow(0, i0, bi), bn.narrow(0, j0, bj).t());
          partial[c] += tile_loss(tile.data_ptr<acc_t>(), i0, bi, j0, bj, p);
        }
      }
    }
  });
  double total = 0;
  for (double x : partial) total += x;
  return total / static_cast<double>(M);
}

// Overwrites the dots S (bi x bj) of one tile with G = g * d loss / dz; adds sum G * dot to
// *dscale and sum G to *dbias, and with kLoss the tile's loss (tile_loss's sum, bit for bit) to *dloss.
template <bool kLoss, typename acc_t>
void tile_grad(acc_t* S, int64_t i0, int64_t bi, int64_t j0, int64_t bj, const Pairs<acc_t>& p, acc_t g,
               double* dscale, double* dbias, double* dloss) {
  double tile_total = 0;  // summed as tile_loss sums it, then added once
  for (int64_t r = 0; r < bi; ++r) {
    acc_t* h = S + r * bj;
    acc_t hs = 0, hb = 0, row = 0;
    for (int64_t k = 0; k < bj; ++k) {
      const acc_t dot = h[k];
      const acc_t z = p.scale * dot + p.bias;
      const bool positive = p.positive(i0 + r, j0 + k);
      acc_t grad;
      if constexpr (kLoss) {
        acc_t loss;
        math::sigmoid_pair_loss_grad(z, positive, &loss, &grad);
        row += loss;
      } else {
        grad = math::sigmoid_pair_grad(z, positive);
      }
      h[k] = g * grad;
      hs += h[k] * dot;
      hb += h[k];
    }
    *dscale += static_cast<double>(hs);
    *dbias += static_cast<double>(hb);
    if constexpr (kLoss) tile_total += static_cast<double>(row);
  }
  if constexpr (kLoss) *dloss += tile_total;
}

// The gradients of the normalised rows, of the scale and of the bias (g = grad_loss / M), and with
// kLoss the loss too (the forward's sum: the same tiles in the same order).
struct Gradients {
  at::Tensor grad_an, grad_bn;
  double dscale = 0, dbias = 0, loss = 0;
};

template <bool kLoss, typename acc_t>
Gradients backward_typed(const at::Tensor& an, const at::Tensor& bn, const Pairs<acc_t>& p, acc_t g) {
  const RowBlocks blocks(an.size(0));
  const int64_t M = blocks.M, L = bn.size(0), D = an.size(1);
  at::Tensor grad_a = at::zeros({M, D}, an.options());
  at::Tensor partials = at::zeros({blocks.chunks, L, D}, an.options());
  std::vector<double> dscale(blocks.chunks, 0.0), dbias(blocks.chunks, 0.0), dloss(blocks.chunks, 0.0);
  at::parallel_for(0, blocks.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::Tensor buffer = at::empty({kTile * kTile}, an.options());
    for (int64_t c = c_begin; c < c_end; ++c) {
      at::Tensor partial = partials[c];
      for (int64_t b = blocks.begin(c); b < blocks.end(c); ++b) {
        const int64_t i0 = b * kTile, bi = blocks.rows(b);
        const at::Tensor a_blk = an.narrow(0, i0, bi);
        at::Tensor grad_blk = grad_a.narrow(0, i0, bi);
        for (int64_t j0 = 0; j0 < L; j0 += kTile) {
          const int64_t bj = std::min(kTile, L - j0);
          const at::Tensor b_tile = bn.narrow(0, j0, bj);
          at::Tensor tile = tile_view(buffer, bi, bj);
          at::mm_out(tile, a_blk, b_tile.t());
          tile_grad<kLoss>(tile.data_ptr<acc_t>(), i0, bi, j0, bj, p, g, &dscale[c], &dbias[c], &dloss[c]);
          grad_blk.addmm_(tile, b_tile);
          partial.narrow(0, j0, bj).addmm_(tile.t(), a_blk);
        }
      }
    }
  });
  Gradients out{grad_a.mul_(p.scale), partials.sum(0).mul_(p.scale)};
  for (int64_t c = 0; c < blocks.chunks; ++c) out.dscale += dscale[c], out.dbias += dbias[c], out.loss += dloss[c];
  out.loss /= static_cast<double>(M);
  return out;
}

// The ids as contiguous int64 (kept alive by the caller) and the Pairs that point into them.
template <typename acc_t>
Pairs<acc_t> make_pairs(const at::Tensor& logit_scale, const at::Tensor& logit_bias, int64_t offset,
                        const at::Tensor& a_ids, const at::Tensor& b_ids) {
  const bool ids = a_ids.defined();
  return {logit_scale.item<acc_t>(), logit_bias.item<acc_t>(), offset, ids ? a_ids.data_ptr<int64_t>() : nullptr,
          ids ? b_ids.data_ptr<int64_t>() : nullptr};
}

at::Tensor contiguous_ids(const c10::optional<at::Tensor>& ids) {
  return ids.has_value() ? ids->contiguous() : at::Tensor();
}

at::Tensor siglip_forward_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale,
                              const at::Tensor& logit_bias, bool normalize, const c10::optional<at::Tensor>& a_ids,
                              const c10::optional<at::Tensor>& b_ids, int64_t offset) {
  check_siglip_args(a, b, logit_scale, logit_bias, a_ids, b_ids);
  const at::ScalarType acc = loss_dtype(a.scalar_type());
  const Normalised an = normalise_rows(a, acc, normalize), bn = normalise_rows(b, acc, normalize);
  const at::Tensor row_ids = contiguous_ids(a_ids), col_ids = contiguous_ids(b_ids);
  const double loss =
      acc == at::kDouble
          ? forward_typed(an.rows, bn.rows, make_pairs<double>(logit_scale, logit_bias, offset, row_ids, col_ids))
          : forward_typed(an.rows, bn.rows, make_pairs<float>(logit_scale, logit_bias, offset, row_ids, col_ids));
  return at::scalar_tensor(loss, a.options().dtype(acc));
}

// (loss, grad_a, grad_b, grad_scale, grad_bias) for grad_loss `grad` (kLoss: the loss computed in
// the same pass; else undefined); the row gradients in the loss dtype.
template <bool kLoss>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gradients(
    double grad, const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale, const at::Tensor& logit_bias,
    bool normalize, const c10::optional<at::Tensor>& a_ids, const c10::optional<at::Tensor>& b_ids, int64_t offset) {
  const at::ScalarType acc = loss_dtype(a.scalar_type());
  const Normalised an = normalise_rows(a, acc, normalize), bn = normalise_rows(b, acc, normalize);
  const at::Tensor row_ids = contiguous_ids(a_ids), col_ids = contiguous_ids(b_ids);
  const auto run = [&](auto zero) {
    using acc_t = decltype(zero);
    const acc_t g = static_cast<acc_t>(grad / static_cast<double>(a.size(0)));
    const Pairs<acc_t> pairs = make_pairs<acc_t>(logit_scale, logit_bias, offset, row_ids, col_ids);
    const Gradients out = backward_typed<kLoss, acc_t>(an.rows, bn.rows, pairs, g);
    const auto opts = a.options().dtype(acc);
    return std::make_tuple(kLoss ? at::scalar_tensor(out.loss, opts) : at::Tensor(),
                           normalise_backward(out.grad_an, an, normalize), normalise_backward(out.grad_bn, bn, normalize),
                           at::scalar_tensor(out.dscale, opts), at::scalar_tensor(out.dbias, opts));
  };
  return acc == at::kDouble ? run(double(0)) : run(float(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> siglip_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale,
    const at::Tensor& logit_bias, bool normalize, const c10::optional<at::Tensor>& a_ids,
    const c10::optional<at::Tensor>& b_ids, int64_t offset) {
  check_siglip_args(a, b, logit_scale, logit_bias, a_ids, b_ids);
  check_siglip_backward_args(a, grad_loss);
  auto [loss, grad_a, grad_b, dscale, dbias] =
      gradients<false>(grad_loss.item<double>(), a, b, logit_scale, logit_bias, normalize, a_ids, b_ids, offset);
  return {grad_a.to(a.scalar_type()), grad_b.to(b.scalar_type()), dscale, dbias};
}

// The loss and its gradients for grad_loss = 1 in one pass over the tiles: three (M x L x D)
// products where a forward and a backward take four. The gradients stay in the loss dtype, for
// autograd to scale by grad_loss before rounding to the inputs' dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> siglip_forward_backward_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale, const at::Tensor& logit_bias,
    bool normalize, const c10::optional<at::Tensor>& a_ids, const c10::optional<at::Tensor>& b_ids, int64_t offset) {
  check_siglip_args(a, b, logit_scale, logit_bias, a_ids, b_ids);
  return gradients<true>(1.0, a, b, logit_scale, logit_bias, normalize, a_ids, b_ids, offset);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) {
  m.impl("siglip_forward", &siglip_forward_cpu);
  m.impl("siglip_backward", &siglip_backward_cpu);
  m.impl("siglip_forward_backward", &siglip_forward_backward_cpu);
}

}  // namespace fastcl::cpu
