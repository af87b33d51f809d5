// The shadow of shared memory. Every shared byte (the launch's dynamic bytes and the kernel
// module's TLS block, where the __shared__ arrays live) has a cell recording its last write and
// its reads since the last barrier, by thread, barrier epoch and warp __syncwarp sequence, and
// the cp.async copies in flight to it. An in-bounds shared access (memcheck.cpp has classified
// it) is checked against its cells for uninitialised reads and races, then recorded. Barriers
// start a new epoch; a completed __syncwarp orders its lanes from then on.
// Compiled without instrumentation.
#include <vector>

#include "memcheck.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

// Per shared byte. Epochs number the block's barrier intervals (global, so a block's first
// epoch tells "written since block start"); seq numbers a warp's completed collectives.
struct Cell {
  uint32_t w_epoch, w_seq;  // last write
  uint32_t r_epoch, r_seq;  // reads in r_epoch (r_seq: the warp seq of every r_lanes read, if r_ext == 0)
  uint32_t r_lanes;         // lanes of warp r_warp that read in r_epoch
  uint32_t r_ext;           // 1 + index in g_lane_seqs when r_lanes read at different seqs, else 0
  uint16_t w_tid, r_tid, r_other, p_tid;  // writer, a reader in r_warp, a reader outside it, cp.async issuer
  uint16_t pending;                       // cp.async copies in flight to this byte
  uint8_t r_warp, flags;
};
enum : uint8_t { kMultiWarp = 1, kAtomicWrite = 2 };
// Each reader lane's latest read seq, for cells whose readers read at different seqs: a single
// seq per cell would make an older lane's read look as recent as the latest one, unordered by a
// __syncwarp in between. Only read records of the current epoch are consulted, so the pool is
// emptied at every barrier.
struct LaneSeqs {
  uint32_t seq[32];
};
std::vector<LaneSeqs> g_lane_seqs;
std::vector<Cell> g_dyn_cells, g_tls_cells;
uint32_t g_epoch = 0, g_block_epoch0 = 0;
bool g_race_check = true;

bool ordered(int prev, uint32_t prev_seq, int tid) {
  if ((prev >> 5) != (tid >> 5)) return false;
  return L.warps[tid >> 5].common[prev & 31][tid & 31] > prev_seq;
}

void race(const char* kind, int tid, int other, Access k, size_t n, bool dyn, size_t off, const Origin& o,
          const char* other_did) {
  const bool same_warp = (other >> 5) == (tid >> 5);
  fail("shared memory race", tid,
       std::string("(") + kind + ") " + (k == Access::Read ? "reads " : "writes ") + std::to_string(n) + " bytes at " +
           region_str(dyn, off) + at(o) + "; " + thr(other) + " " + other_did +
           " byte since the last __syncthreads" +
           (same_warp ? ", with no __syncwarp of both lanes in between" : ""));
}

}  // namespace

void shadow(bool dyn, size_t off, size_t n, Access k, int tid, const Origin& o, bool scalar, bool record) {
  Cell* const cells = dyn ? g_dyn_cells.data() : g_tls_cells.data();
  const uint32_t E = g_epoch;
  const int w = tid >> 5, lane = tid & 31;
  const uint32_t seq = L.warps[w].seq;
  // A cp.async into these bytes that its issuer has not waited for: the data may land at any
  // moment (first, as it also explains what an uninitialised read would report).
  for (size_t i = 0; g_race_check && i < n; ++i)
    if (cells[off + i].pending)
      fail("shared memory race", tid,
           access_str(k, n) + " at " + region_str(dyn, off) + at(o) + " while a cp.async to byte " +
               std::to_string(off + i) + " issued by " + thr(cells[off + i].p_tid) +
               " is still in flight (not yet retired by cp_async_wait_group)");
  if (k != Access::Write && record) {
    size_t unwritten = 0;
    for (size_t i = 0; i < n; ++i) unwritten += cells[off + i].w_epoch < g_block_epoch0;
    if (unwritten && (scalar || unwritten == n))
      fail("uninitialised shared read", tid,
           access_str(k, n) + " at " + region_str(dyn, off) + at(o) + ": " +
               (unwritten == n ? "no thread of this block has written it" : "part of it was never written") +
               " since the block started");
  }
  for (size_t i = 0; i < n; ++i) {
    Cell& c = cells[off + i];
    if (g_race_check) {
      const bool both_atomic = k == Access::Atomic && (c.flags & kAtomicWrite);
      if (c.w_epoch == E && c.w_tid != tid && !both_atomic && !ordered(c.w_tid, c.w_seq, tid))
        race(k == Access::Read ? "read-after-write" : "write-after-write", tid, c.w_tid, k, n, dyn, off + i, o,
             "wrote this");
      if (k != Access::Read && c.r_epoch == E) {
        int other = -1;
        if (c.r_warp != w) other = c.r_tid;
        else if (c.flags & kMultiWarp) other = c.r_other;
        else
          for (unsigned m = c.r_lanes & ~(1u << lane); m; m &= m - 1) {
            const int u = __builtin_ctz(m);
            const uint32_t read_seq = c.r_ext ? g_lane_seqs[c.r_ext - 1].seq[u] : c.r_seq;
            if (L.warps[w].common[u][lane] <= read_seq) {
              other = w * 32 + u;
              break;
            }
          }
        if (other >= 0) race("write-after-read", tid, other, k, n, dyn, off + i, o, "read this");
      }
    }
    if (!record) continue;
    if (k == Access::Read) {
      if (c.r_epoch != E) {
        c.r_epoch = E;
        c.r_warp = static_cast<uint8_t>(w);
        c.r_lanes = 1u << lane;
        c.r_tid = static_cast<uint16_t>(tid);
        c.r_seq = seq;
        c.r_ext = 0;
        c.flags &= ~kMultiWarp;
      } else if (c.r_warp == w) {
        if (c.r_ext) {
          g_lane_seqs[c.r_ext - 1].seq[lane] = seq;
        } else if (c.r_seq != seq && (c.r_lanes & ~(1u << lane))) {
          // Readers at different seqs: keep one seq per lane from now on.
          LaneSeqs ls{};
          for (unsigned m = c.r_lanes; m; m &= m - 1) ls.seq[__builtin_ctz(m)] = c.r_seq;
          ls.seq[lane] = seq;
          g_lane_seqs.push_back(ls);
          c.r_ext = static_cast<uint32_t>(g_lane_seqs.size());
        } else {
          c.r_seq = seq;
        }
        c.r_lanes |= 1u << lane;
        c.r_tid = static_cast<uint16_t>(tid);
      } else {
        c.flags |= kMultiWarp;  // any later write by another thread is then a race
        c.r_other = static_cast<uint16_t>(tid);
      }
    } else {
      c.w_epoch = E;
      c.w_seq = seq;
      c.w_tid = static_cast<uint16_t>(tid);
      c.flags = static_cast<uint8_t>((c.flags & ~kAtomicWrite) | (k == Access::Atomic ? kAtomicWrite : 0));
      c.r_epoch = 0;
    }
  }
}

void precheck_async_write(uintptr_t a, size_t n, int tid, const Origin& o) {
  if (a >= g_hot.dyn_lo && a + n <= g_hot.dyn_lo + g_hot.dyn_size)
    shadow(true, a - g_hot.dyn_lo, n, Access::Write, tid, o, true, false);
  else if (a >= g_hot.tls_lo && a + n <= g_hot.tls_lo + g_hot.tls_size)
    shadow(false, a - g_hot.tls_lo, n, Access::Write, tid, o, true, false);
}

bool mark_pending(uintptr_t a, size_t n, int delta) {
  Cell* cells = nullptr;
  if (a >= g_hot.dyn_lo && a + n <= g_hot.dyn_lo + g_hot.dyn_size) cells = g_dyn_cells.data() + (a - g_hot.dyn_lo);
  else if (a >= g_hot.tls_lo && a + n <= g_hot.tls_lo + g_hot.tls_size) cells = g_tls_cells.data() + (a - g_hot.tls_lo);
  if (!cells) return false;
  for (size_t i = 0; i < n; ++i) {
    cells[i].pending = static_cast<uint16_t>(cells[i].pending + delta);
    cells[i].p_tid = static_cast<uint16_t>(L.tid);
  }
  return true;
}

void shadow_begin_launch(size_t dyn_bytes, size_t tls_bytes) {
  g_dyn_cells.assign(dyn_bytes, Cell{});
  g_tls_cells.assign(tls_bytes, Cell{});
}

void shadow_begin_block() {
  g_block_epoch0 = ++g_epoch;
  g_lane_seqs.clear();
}

void memcheck_barrier() {
  ++g_epoch;
  g_lane_seqs.clear();  // every read record now belongs to a past epoch
}

void memcheck_warp_sync(int warp, unsigned lanes) {
  WarpState& ws = L.warps[warp];
  const uint32_t s = ++ws.seq;
  for (unsigned a = lanes; a; a &= a - 1)
    for (unsigned b = lanes; b; b &= b - 1) ws.common[__builtin_ctz(a)][__builtin_ctz(b)] = s;
}

}  // namespace detail

void set_race_check(bool on) { detail::g_race_check = on; }

}  // namespace sim
}  // namespace fastcl
