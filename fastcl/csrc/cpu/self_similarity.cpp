// Self-similarity path of the CPU contrastive kernels (see self_similarity.h).
//
// Work is the list of tile pairs (I, J), I <= J, split into contiguous chunks; a chunk keeps
// its own per-row log-sum-exp state (forward) or gradient partial (backward), merged in
// chunk order at the end, so results do not depend on thread scheduling.
#include "cpu/self_similarity.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/row_kernels.h"

namespace fastcl::cpu {

using namespace math;

namespace {

constexpr int64_t kTile = kColTile;

struct TilePairs {
  int64_t tiles, count;
  std::vector<std::pair<int64_t, int64_t>> list;
  explicit TilePairs(int64_t M) : tiles((M + kTile - 1) / kTile), count(tiles * (tiles + 1) / 2) {
    for (int64_t I = 0; I < tiles; ++I)
      for (int64_t J = I; J < tiles; ++J) list.emplace_back(I, J);
  }
};

int64_t chunk_count(int64_t pairs) { return std::min<int64_t>(pairs, std::max(1, at::get_num_threads())); }

// Per-row forward state of one chunk.
template <typename acc_t>
struct RowState {
  std::vector<OnlineLSE<acc_t>> lse;
  std::vector<acc_t> pos_sum, pos_count;
  explicit RowState(int64_t M) : lse(M), pos_sum(M, 0), pos_count(M, 0) {}
};

// Rows I of a scaled tile S (bi x bj): row statistics; on a diagonal tile the self pair is masked.
template <typename acc_t>
void rows_of_tile(const Problem<acc_t>& p, acc_t* S, int64_t i0, int64_t bi, int64_t j0, int64_t bj,
                  RowState<acc_t>& st) {
  for (int64_t r = 0; r < bi; ++r) {
    acc_t* row = S + r * bj;
    const int64_t i = i0 + r;
    if (i0 == j0) row[r] = neg_inf<acc_t>();
    acc_t count;
    st.pos_sum[i] += positive_sum(p, i, j0, bj, row, &count);
    st.pos_count[i] += count;
    const acc_t m = max_of(row, bj);
    if (m != neg_inf<acc_t>()) st.lse[i].merge(m, sum_exp_shifted(row, bj, m));
  }
}

// Columns J of an off-diagonal scaled tile: the statistics of rows J, read down the columns.
template <typename acc_t>
void columns_of_tile(const Problem<acc_t>& p, const acc_t* S, int64_t i0, int64_t bi, int64_t j0, int64_t bj,
                     RowState<acc_t>& st, std::vector<acc_t>& cmax, std::vector<acc_t>& csum) {
  std::fill(cmax.begin(), cmax.begin() + bj, neg_inf<acc_t>());
  std::fill(csum.begin(), csum.begin() + bj, acc_t(0));
  for (int64_t r = 0; r < bi; ++r) max_into(cmax.data(), S + r * bj, bj);
  for (int64_t r = 0; r < bi; ++r) add_exp_shifted_into(csum.data(), S + r * bj, cmax.data(), bj);
  const int64_t* labels_j = p.col_labels + j0;
  for (int64_t r = 0; r < bi; ++r) {
    const int64_t label = p.row_labels[i0 + r];
    const acc_t* row = S + r * bj;
    for (int64_t c = 0; c < bj; ++c) {
      if (is_positive(label, labels_j[c])) {
        st.pos_sum[j0 + c] += row[c];
        st.pos_count[j0 + c] += 1;
      }
    }
  }
  for (int64_t c = 0; c < bj; ++c) st.lse[j0 + c].merge(cmax[c], csum[c]);
}

}  // namespace

bool self_similarity_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
                             const at::Tensor& col_labels, const at::Tensor& row_ids, const at::Tensor& col_ids,
                             bool has_bias, int64_t row_offset, bool exclude_self, int64_t bytes_per_element) {
  if (!q.is_same(k) || has_bias || row_offset != 0 || !exclude_self) return false;
  if (!row_labels.is_same(col_labels) && !at::equal(row_labels, col_labels)) return false;
  if (row_ids.defined()) {
    if (!row_ids.is_same(col_ids) && !at::equal(row_ids, col_ids)) return false;
    if (col_ids.numel() > 0 && col_ids.min().item<int64_t>() < -1) return false;
  }
  const int64_t chunks = chunk_count(TilePairs(q.size(0)).count);
  return chunks * q.size(0) * q.size(1) * bytes_per_element <= partial_budget();
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> self_similarity_forward(const Problem<acc_t>& p,
                                                                       const at::Tensor& zn) {
  const int64_t M = p.M;
  const TilePairs pairs(M);
  const int64_t chunks = chunk_count(pairs.count);
  std::vector<RowState<acc_t>> states;
  for (int64_t c = 0; c < chunks; ++c) states.emplace_back(M);
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::Tensor buffer = at::empty({kTile * kTile}, zn.options());
    std::vector<acc_t> cmax(kTile), csum(kTile);
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t n = c * pairs.count / chunks; n < (c + 1) * pairs.count / chunks; ++n) {
        const auto [I, J] = pairs.list[n];
        const int64_t i0 = I * kTile, j0 = J * kTile;
        const int64_t bi = std::min(kTile, M - i0), bj = std::min(kTile, M - j0);
        at::Tensor tile = tile_view(buffer, bi, bj);
        at::mm_out(tile, zn.narrow(0, i0, bi), zn.narrow(0, j0, bj).t());
        acc_t* S = tile.data_ptr<acc_t>();
        scale_in_place(S, bi * bj, p.scale);
        // Symmetric ids make the duplicate mask symmetric: one pass serves both roles.
        for (int64_t r = 0; r < bi; ++r) mask_duplicates(p, i0 + r, j0, bj, S + r * bj);
        // Columns first: rows_of_tile masks the diagonal in place, which only diagonal tiles have.
        if (I != J) columns_of_tile(p, S, i0, bi, j0, bj, states[c], cmax, csum);
        rows_of_tile(p, S, i0, bi, j0, bj, states[c]);
      }
    }
  });
  const auto opts = zn.options();
  at::Tensor loss = at::empty({M}, opts), lse = at::empty({M}, opts), num_pos = at::empty({M}, opts);
  acc_t* loss_p = loss.data_ptr<acc_t>();
  acc_t* lse_p = lse.data_ptr<acc_t>();
  acc_t* pos_p = num_pos.data_ptr<acc_t>();
  for (int64_t i = 0; i < M; ++i) {
    OnlineLSE<acc_t> total;
    acc_t sum = 0, count = 0;
    for (const RowState<acc_t>& st : states) {
      total.merge(st.lse[i].m, st.lse[i].l);
      sum += st.pos_sum[i];
      count += st.pos_count[i];
    }
    lse_p[i] = total.value();
    pos_p[i] = count;
    loss_p[i] = count > 0 ? lse_p[i] - sum / count : acc_t(0);
  }
  return {loss, lse, num_pos};
}

template <typename acc_t>
std::tuple<at::Tensor, acc_t> self_similarity_backward(const Problem<acc_t>& p, const at::Tensor& zn,
                                                       const at::Tensor& grad, const at::Tensor& lse,
                                                       const at::Tensor& num_pos) {
  const int64_t M = p.M, D = p.D;
  const TilePairs pairs(M);
  const int64_t chunks = chunk_count(pairs.count);
  const acc_t* lse_p = lse.data_ptr<acc_t>();
  const acc_t* pos_p = num_pos.data_ptr<acc_t>();
  const acc_t* grad_p = grad.data_ptr<acc_t>();
  // Per row: the gradient weight (0 for rows without positives, whose loss is constant) and
  // the share each positive takes off.
  std::vector<acc_t> g(M), share(M);
  for (int64_t i = 0; i < M; ++i) {
    g[i] = pos_p[i] > 0 ? grad_p[i] : acc_t(0);
    share[i] = pos_p[i] > 0 ? g[i] / pos_p[i] : acc_t(0);
  }
  at::Tensor partials = at::zeros({chunks, M, D}, zn.options());
  std::vector<double> dscale(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::Tensor dots = at::empty({kTile * kTile}, zn.options());
    at::Tensor hbuf = at::empty({kTile * kTile}, zn.options());
    std::vector<acc_t> logits(kTile);
    for (int64_t c = c_begin; c < c_end; ++c) {
      at::Tensor partial = partials[c];
      for (int64_t n = c * pairs.count / chunks; n < (c + 1) * pairs.count / chunks; ++n) {
        const auto [I, J] = pairs.list[n];
        const int64_t i0 = I * kTile, j0 = J * kTile;
        const int64_t bi = std::min(kTile, M - i0), bj = std::min(kTile, M - j0);
        const at::Tensor zi = zn.narrow(0, i0, bi), zj = zn.narrow(0, j0, bj);
        at::Tensor dot_tile = tile_view(dots, bi, bj);
        at::Tensor h_tile = tile_view(hbuf, bi, bj);
        at::mm_out(dot_tile, zi, zj.t());
        const acc_t* S = dot_tile.data_ptr<acc_t>();
        acc_t* H = h_tile.data_ptr<acc_t>();
        double tile_dscale = 0;
        for (int64_t r = 0; r < bi; ++r) {
          const int64_t i = i0 + r;
          const acc_t* dot = S + r * bj;
          acc_t* h = H + r * bj;
          std::memcpy(logits.data(), dot, bj * sizeof(acc_t));
          scale_in_place(logits.data(), bj, p.scale);
          mask_duplicates(p, i, j0, bj, logits.data());
          if (I == J) logits[r] = neg_inf<acc_t>();
          // h = G_ij (row i's softmax gradient) + G_ji (row j's, read down column j).
          softmax_grad_row(logits.data(), h, bj, lse_p[i], g[i]);
          if (I != J) softmax_grad_cols_add(logits.data(), h, bj, lse_p + j0, g.data() + j0);
          const int64_t label = p.row_labels[i];
          const int64_t* labels_j = p.col_labels + j0;
          for (int64_t cc = 0; cc < bj; ++cc) {
            if ((I != J || cc != r) && is_positive(label, labels_j[cc])) {
              h[cc] -= share[i] + (I != J ? share[j0 + cc] : acc_t(0));
            }
          }
          tile_dscale += static_cast<double>(dot_of(h, dot, bj));
        }
        dscale[c] += tile_dscale;
        if (I == J) {
          // The diagonal tile holds G_II only: its column role is the transpose.
          const at::Tensor sym = h_tile + h_tile.t();
          partial.narrow(0, i0, bi).addmm_(sym, zi);
        } else {
          partial.narrow(0, i0, bi).addmm_(h_tile, zj);
          partial.narrow(0, j0, bj).addmm_(h_tile.t(), zi);
        }
      }
    }
  });
  double total = 0;
  for (double d : dscale) total += d;
  return {partials.sum(0).mul_(p.scale), static_cast<acc_t>(total)};
}

template std::tuple<at::Tensor, at::Tensor, at::Tensor> self_similarity_forward<float>(const Problem<float>&,
                                                                                       const at::Tensor&);
template std::tuple<at::Tensor, at::Tensor, at::Tensor> self_similarity_forward<double>(const Problem<double>&,
                                                                                        const at::Tensor&);
template std::tuple<at::Tensor, float> self_similarity_backward<float>(const Problem<float>&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&);
template std::tuple<at::Tensor, double> self_similarity_backward<double>(const Problem<double>&,
                                                                         const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&, const at::Tensor&);

}  // namespace fastcl::cpu
