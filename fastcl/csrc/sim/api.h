// The interface between the simulated CUDA code and the simulator's runtime. Included by
// cuda_sim.h (compiled into the instrumented kernel translation unit) and by the runtime's own
// .cpp files (compiled without instrumentation). Only plain declarations live here, so both
// sides agree on one layout; the runtime's private state is in state.h.
#pragma once
#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fastcl {
namespace sim {

// ---- host-side controls --------------------------------------------------------------------

// Device memory a kernel may touch: reads and writes inside a registered range are fine, any
// other heap/static address a kernel reaches is reported as "global out of bounds".
void register_global(const void* p, size_t bytes, const char* what);
void unregister_global(const void* p);
void clear_globals();
// Anything with data_ptr() and nbytes() (a torch tensor), named for messages.
template <typename Tensor>
auto register_global(const Tensor& t, const char* what) -> decltype(t.data_ptr(), t.nbytes(), void()) {
  register_global(t.data_ptr(), static_cast<size_t>(t.nbytes()), what);
}
// Removes, when it goes out of scope, every range registered since it was created.
class GlobalScope {
 public:
  GlobalScope();
  ~GlobalScope();
  GlobalScope(const GlobalScope&) = delete;
  GlobalScope& operator=(const GlobalScope&) = delete;
  void add(const void* p, size_t bytes, const char* what) { register_global(p, bytes, what); }
  template <typename Tensor>
  void add(const Tensor& t, const char* what) { register_global(t, what); }

 private:
  size_t mark_;
};

void set_global_check(bool on);  // off: unregistered global addresses are not reported
void set_race_check(bool on);    // off: shared-memory races are not reported (the others stay)
// 0: threads run in index order; any other seed shuffles the runnable threads at every round.
void set_schedule(uint64_t seed);

// The device the simulator pretends to be (an H200).
struct DeviceProperties {
  const char* name;
  int major, minor;
  int multiProcessorCount;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int warpSize;
  size_t sharedMemPerBlock;             // 48 KiB without opt-in
  size_t sharedMemPerBlockOptin;        // 227 KiB
  size_t sharedMemPerMultiprocessor;    // 228 KiB
  size_t reservedSharedMemPerBlock;     // 1 KiB the hardware keeps per resident block
  int maxThreadsPerMultiProcessor;      // 2048
  int maxBlocksPerMultiProcessor;       // 32
  int regsPerBlock, regsPerMultiprocessor;
  size_t totalGlobalMem;
};
const DeviceProperties* device_properties();
// Tests: the SM count the ops see (132 by default), which sets how they split the stream of tiles
// over blocks; returns the count before. Fewer SMs give each block more tiles, through the pipeline.
int set_multiprocessor_count(int count);

namespace detail {

// Where a synchronisation call was written. A parameter `Site s = {}` records its caller's
// file and line: the defaults below are evaluated at the call site (g++ and clang).
struct Site {
  const char* file;
  int line;
  Site(const char* f = __builtin_FILE(), int l = __builtin_LINE()) : file(f), line(l) {}
};

// The simulated thread now running; threadIdx & co read it. Its address range is exempt from
// the memory checks (reads of builtins are instrumented like any other load).
struct CurrentThread {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern CurrentThread g_cur;

// ---- launches -----------------------------------------------------------------------------
struct LaunchSpec {
  const void* kernel;        // identity for limits and for finding the module (static shared)
  const char* pretty;        // __PRETTY_FUNCTION__ of a template <auto K> helper
  dim3 grid, block;
  size_t dynamic_smem;
  void (*entry)(void* args);  // runs one simulated thread: calls the kernel with *args
  void* args;
};
void launch(const LaunchSpec& spec);  // throws std::runtime_error on any error
void set_max_dynamic_smem(const void* kernel, const char* pretty, size_t bytes);
int max_active_blocks_per_sm(const void* kernel, int threads, size_t dynamic_smem);

// Called by the fiber body around the kernel call: memory checks apply in between.
void kernel_begin();
void kernel_end();

// ---- device-side services (all are calls into uninstrumented code) --------------------------
void* dynamic_smem(size_t align);
[[noreturn]] void trap(Site site);
// Block barrier; pred/op give __syncthreads_count/and/or (op 0: plain).
int syncthreads(int op, int pred, Site site);

enum class Coll : int { SyncWarp, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, WmmaLoad, WmmaMma, WmmaStore,
                        Ldmatrix, Mma };
// Shuffles and votes: each lane deposits `value` (its bytes) and `operand` (src lane, delta or
// lane mask; pred for votes); returns the lane's result.
uint64_t warp_collective(Coll kind, unsigned mask, uint64_t value, int operand, int width, Site site);
unsigned activemask();

// wmma: one lane's share of a collective. `frag` is the lane's 8 elements.
enum class FragUse : int { A, B, Acc };
enum class Elem : int { F16, BF16, F32 };
void wmma_load(FragUse use, Elem elem, void* frag, const void* ptr, unsigned ldm, bool col_major, Site site);
void wmma_store(void* ptr, const float* frag, unsigned ldm, bool col_major, Site site);
void wmma_mma(Elem ab, float* d, const void* a, const void* b, const float* c, Site site);

// Device atomics (on shared or registered global memory; checked, never reported as races).
enum class AtomicOp : int { Add, Sub, Min, Max, Exch, And, Or, Xor, Inc, Dec, Cas };
enum class AtomicType : int { I32, U32, U64, I64, F32, F64 };
uint64_t atomic_op(AtomicOp op, AtomicType type, void* p, uint64_t v, uint64_t compare, Site site);

}  // namespace detail

// cp.async: queued per thread, performed at the wait that retires its group.
void cp_async(void* dst_shared, const void* src_global, int bytes, int src_bytes,
              detail::Site site = {});
void cp_async_commit();
void cp_async_wait_group(int n, detail::Site site = {});
void cp_async_wait_all(detail::Site site = {});

// The current block's dynamic shared memory: exactly the launched size, 0xFF-poisoned at every
// block start, aligned to `align` (a power of two up to 4096) and deliberately not to twice that,
// as on the GPU only the declared alignment is promised.
inline void* dynamic_smem(size_t align = 16) { return detail::dynamic_smem(align); }

}  // namespace sim
}  // namespace fastcl
