// Device atomics (atomicAdd, atomicSub, atomicExch, atomicMin, atomicMax, atomicAnd, atomicOr,
// atomicXor, atomicInc, atomicDec, atomicCAS) on 4- and 8-byte integers and floats. Each is
// checked as one atomic access (alignment, bounds, uninitialised shared bytes; atomic against
// atomic is not a race), then performed; simulated threads never run at the same time, so a
// plain read-modify-write is atomic. Compiled without instrumentation.
#include <cstring>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

}  // namespace

uint64_t atomic_op(AtomicOp op, AtomicType type, void* p, uint64_t v, uint64_t compare, Site site) {
  FromKernel guard;
  require_fiber("atomic");
  const int tid = L.tid;
  const size_t n = (type == AtomicType::U64 || type == AtomicType::I64 || type == AtomicType::F64) ? 8 : 4;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % n) fail("misaligned address", tid, "atomic on " + std::to_string(n) + " bytes at a misaligned address (" + site_str(site) + ")");
  check_access(a, n, Access::Atomic, tid, Origin{nullptr, site, "atomic"});
  uint64_t old = 0;
  std::memcpy(&old, p, n);
  auto as_i = [&](uint64_t x) -> int64_t { return n == 4 ? int64_t(int32_t(uint32_t(x))) : int64_t(x); };
  auto as_f = [&](uint64_t x) -> double {
    if (n == 8) { double d; std::memcpy(&d, &x, 8); return d; }
    float f; uint32_t u = uint32_t(x); std::memcpy(&f, &u, 4); return f;
  };
  auto from_f = [&](double d) -> uint64_t {
    if (n == 8) { uint64_t x; std::memcpy(&x, &d, 8); return x; }
    float f = static_cast<float>(d); uint32_t u; std::memcpy(&u, &f, 4); return u;
  };
  const bool is_f = type == AtomicType::F32 || type == AtomicType::F64;
  const bool is_signed = type == AtomicType::I32 || type == AtomicType::I64;
  const uint64_t mask = n == 4 ? 0xffffffffull : ~0ull;
  uint64_t nv = old;
  switch (op) {
    case AtomicOp::Add: nv = is_f ? from_f(as_f(old) + as_f(v)) : old + v; break;
    case AtomicOp::Sub: nv = old - v; break;
    case AtomicOp::Exch: nv = v; break;
    case AtomicOp::And: nv = old & v; break;
    case AtomicOp::Or: nv = old | v; break;
    case AtomicOp::Xor: nv = old ^ v; break;
    case AtomicOp::Min: nv = is_signed ? (as_i(v) < as_i(old) ? v : old) : ((v & mask) < (old & mask) ? v : old); break;
    case AtomicOp::Max: nv = is_signed ? (as_i(v) > as_i(old) ? v : old) : ((v & mask) > (old & mask) ? v : old); break;
    case AtomicOp::Inc: nv = (old & mask) >= (v & mask) ? 0 : old + 1; break;
    case AtomicOp::Dec: nv = ((old & mask) == 0 || (old & mask) > (v & mask)) ? v : old - 1; break;
    case AtomicOp::Cas: nv = (old & mask) == (compare & mask) ? v : old; break;
  }
  std::memcpy(p, &nv, n);
  return old & mask;
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl
