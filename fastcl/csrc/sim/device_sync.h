// Barriers, warp collectives, votes, __trap and device atomics. Part of cuda_sim.h. Each takes
// its call site through a defaulted __builtin_FILE()/__builtin_LINE() argument, so messages
// name the source line and a barrier can be matched by site.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastcl {
namespace sim {
namespace detail {

template <typename T>
inline T shfl(Coll k, unsigned mask, T var, int operand, int width, Site s) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  __builtin_memcpy(&bits, &var, sizeof(T));
  const uint64_t r = warp_collective(k, mask, bits, operand, width, s);
  T out;
  __builtin_memcpy(&out, &r, sizeof(T));
  return out;
}

template <typename T> struct Same { using type = T; };
template <typename T> constexpr AtomicType atomic_type() {
  static_assert(std::is_arithmetic<T>::value && (sizeof(T) == 4 || sizeof(T) == 8), "unsupported atomic type");
  return std::is_floating_point<T>::value ? (sizeof(T) == 4 ? AtomicType::F32 : AtomicType::F64)
         : sizeof(T) == 4 ? (std::is_signed<T>::value ? AtomicType::I32 : AtomicType::U32)
                          : (std::is_signed<T>::value ? AtomicType::I64 : AtomicType::U64);
}
template <typename T>
inline T atomic(AtomicOp op, T* p, T v, T cmp, Site s) {
  uint64_t bv = 0, bc = 0;
  __builtin_memcpy(&bv, &v, sizeof(T));
  __builtin_memcpy(&bc, &cmp, sizeof(T));
  const uint64_t r = atomic_op(op, atomic_type<T>(), p, bv, bc, s);
  T out;
  __builtin_memcpy(&out, &r, sizeof(T));
  return out;
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

inline void __syncthreads(::fastcl::sim::detail::Site s = {}) { ::fastcl::sim::detail::syncthreads(0, 0, s); }
inline int __syncthreads_count(int pred, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::syncthreads(1, pred, s);
}
inline int __syncthreads_and(int pred, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::syncthreads(2, pred, s);
}
inline int __syncthreads_or(int pred, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::syncthreads(3, pred, s);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, ::fastcl::sim::detail::Site s = {}) {
  ::fastcl::sim::detail::warp_collective(::fastcl::sim::detail::Coll::SyncWarp, mask, 0, 0, 32, s);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::shfl(::fastcl::sim::detail::Coll::ShflIdx, mask, var, src_lane, width, s);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::shfl(::fastcl::sim::detail::Coll::ShflUp, mask, var, static_cast<int>(delta), width, s);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::shfl(::fastcl::sim::detail::Coll::ShflDown, mask, var, static_cast<int>(delta), width, s);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::shfl(::fastcl::sim::detail::Coll::ShflXor, mask, var, lane_mask, width, s);
}
inline unsigned __ballot_sync(unsigned mask, int pred, ::fastcl::sim::detail::Site s = {}) {
  return static_cast<unsigned>(
      ::fastcl::sim::detail::warp_collective(::fastcl::sim::detail::Coll::Ballot, mask, pred != 0, 0, 32, s));
}
inline int __any_sync(unsigned mask, int pred, ::fastcl::sim::detail::Site s = {}) {
  return static_cast<int>(::fastcl::sim::detail::warp_collective(::fastcl::sim::detail::Coll::Any, mask, pred != 0, 0, 32, s));
}
inline int __all_sync(unsigned mask, int pred, ::fastcl::sim::detail::Site s = {}) {
  return static_cast<int>(::fastcl::sim::detail::warp_collective(::fastcl::sim::detail::Coll::All, mask, pred != 0, 0, 32, s));
}
// The lanes of the caller's warp that have not exited.
inline unsigned __activemask() { return ::fastcl::sim::detail::activemask(); }
[[noreturn]] inline void __trap(::fastcl::sim::detail::Site s = {}) { ::fastcl::sim::detail::trap(s); }

// Atomics: deduced from the pointer only, so atomicAdd(&f, 1) converts 1 as CUDA's overloads do.
#define FASTCL_SIM_ATOMIC(name, op)                                                                          \
  template <typename T>                                                                                     \
  inline T name(T* p, typename ::fastcl::sim::detail::Same<T>::type v,                                      \
                ::fastcl::sim::detail::Site s = {}) {                                           \
    return ::fastcl::sim::detail::atomic<T>(::fastcl::sim::detail::AtomicOp::op, p, v, T(), s);              \
  }
FASTCL_SIM_ATOMIC(atomicAdd, Add)
FASTCL_SIM_ATOMIC(atomicSub, Sub)
FASTCL_SIM_ATOMIC(atomicExch, Exch)
FASTCL_SIM_ATOMIC(atomicMin, Min)
FASTCL_SIM_ATOMIC(atomicMax, Max)
FASTCL_SIM_ATOMIC(atomicAnd, And)
FASTCL_SIM_ATOMIC(atomicOr, Or)
FASTCL_SIM_ATOMIC(atomicXor, Xor)
FASTCL_SIM_ATOMIC(atomicInc, Inc)
FASTCL_SIM_ATOMIC(atomicDec, Dec)
#undef FASTCL_SIM_ATOMIC
template <typename T>
inline T atomicCAS(T* p, typename ::fastcl::sim::detail::Same<T>::type compare,
                   typename ::fastcl::sim::detail::Same<T>::type val, ::fastcl::sim::detail::Site s = {}) {
  return ::fastcl::sim::detail::atomic<T>(::fastcl::sim::detail::AtomicOp::Cas, p, val, compare, s);
}
