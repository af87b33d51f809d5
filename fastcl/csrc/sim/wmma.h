// nvcuda::wmma for 16x16x16 tiles: fp16/bf16 operands, fp32 accumulators. Part of cuda_sim.h.
// A fragment holds one lane's distinct share of the tile (8 of its 256 elements, the same
// split for every use), so elementwise loops over x[0, num_elements) are valid; the layout is
// the simulator's own, not the hardware's. load/mma/store are warp collectives run by the
// runtime, whose memory traffic goes through the same checks as kernel accesses.
#pragma once
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "fastcl.sim implements wmma for 16x16x16 only");
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value ||
                    (std::is_same<Use, accumulator>::value && std::is_same<T, float>::value),
                "fastcl.sim wmma: fp16/bf16 operands and fp32 accumulators");

 public:
  enum { num_elements = 8 };
  using element_type = T;
  T x[num_elements];
};

namespace detail {
template <typename T> constexpr ::fastcl::sim::detail::Elem elem() {
  return std::is_same<T, __half>::value ? ::fastcl::sim::detail::Elem::F16
         : std::is_same<T, __nv_bfloat16>::value ? ::fastcl::sim::detail::Elem::BF16
                                                 : ::fastcl::sim::detail::Elem::F32;
}
template <typename L> constexpr bool is_col() { return std::is_same<L, col_major>::value; }
template <typename T, typename V> inline T convert(const V& v) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __float2bfloat16_rn(static_cast<float>(v));
  else return static_cast<T>(v);
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  const T t = detail::convert<T>(v);
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = t;
}

template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L>& f, const T* p, unsigned ldm,
                             ::fastcl::sim::detail::Site s = {}) {
  ::fastcl::sim::detail::wmma_load(::fastcl::sim::detail::FragUse::A, detail::elem<T>(), f.x, p, ldm, detail::is_col<L>(), s);
}
template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L>& f, const T* p, unsigned ldm,
                             ::fastcl::sim::detail::Site s = {}) {
  ::fastcl::sim::detail::wmma_load(::fastcl::sim::detail::FragUse::B, detail::elem<T>(), f.x, p, ldm, detail::is_col<L>(), s);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout,
                             ::fastcl::sim::detail::Site s = {}) {
  ::fastcl::sim::detail::wmma_load(::fastcl::sim::detail::FragUse::Acc, ::fastcl::sim::detail::Elem::F32, f.x, p, ldm,
                                   layout == mem_col_major, s);
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t layout,
                              ::fastcl::sim::detail::Site s = {}) {
  ::fastcl::sim::detail::wmma_store(p, f.x, ldm, layout == mem_col_major, s);
}
// d = a b + c with fp32 accumulation: each product exact in fp32, summed over k in order.
template <typename T, typename La, typename Lb>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, La>& a,
                     const fragment<matrix_b, 16, 16, 16, T, Lb>& b, const fragment<accumulator, 16, 16, 16, float>& c,
                     bool satf = false, ::fastcl::sim::detail::Site s = {}) {
  static_assert(!std::is_same<T, float>::value, "fastcl.sim wmma: fp16/bf16 operands only");
  (void)satf;
  ::fastcl::sim::detail::wmma_mma(detail::elem<T>(), d.x, a.x, b.x, c.x, s);
}

}  // namespace wmma
}  // namespace nvcuda
