// Test-only: the library fastcl_sim, whose CPU kernels are the CUDA sources of csrc/cuda run by
// the CPU simulator (fastcl/csrc/sim), plus the memory bookkeeping a call needs. Built by tests/sim/sim_ops.py
// together with csrc/cuda/*.cu (as host C++) and csrc/checks.cpp.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "schemas.h"
#include "sim/api.h"
#include "sim/mma.h"

TORCH_LIBRARY(fastcl_sim, m) {
  m.def(fastcl::schema::kContrastiveForward);
  m.def(fastcl::schema::kContrastiveBackward);
  m.def(fastcl::schema::kContrastivePairForward);
  m.def(fastcl::schema::kContrastivePairBackward);
  m.def(fastcl::schema::kAugment);
  m.def(fastcl::schema::kSiglipForward);
  m.def(fastcl::schema::kSiglipBackward);
}

namespace {

// While a simulated op runs, every CPU tensor it allocates is device memory its kernels may
// touch: registered with the simulator on allocation, removed again when freed (so a kernel that
// reads a freed temporary is reported as out of bounds).
struct Tracked {
  c10::DataPtr inner;
};

// The simulator's range table is not thread-safe: only the thread that made the call (and runs
// the kernels) registers and removes ranges.
std::thread::id g_call_thread;

void free_tracked(void* ctx) {
  auto* t = static_cast<Tracked*>(ctx);
  if (std::this_thread::get_id() == g_call_thread) fastcl::sim::unregister_global(t->inner.get());
  delete t;
}

struct TrackingAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base->allocate(n);
    void* data = inner.get();
    if (data == nullptr) return inner;
    if (std::this_thread::get_id() == g_call_thread) fastcl::sim::register_global(data, n, "a tensor the op allocated");
    return {data, new Tracked{std::move(inner)}, &free_tracked, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // raw_allocate is not supported
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

TrackingAllocator g_tracking;
c10::Allocator* g_previous = nullptr;

// The tensors an op call receives: (address, bytes) of each one's storage.
void begin_call(const std::vector<std::pair<uintptr_t, size_t>>& inputs) {
  TORCH_CHECK(g_previous == nullptr, "fastcl_sim: a simulated op call is already in progress");
  g_call_thread = std::this_thread::get_id();
  fastcl::sim::clear_globals();
  for (const auto& [address, bytes] : inputs) {
    fastcl::sim::register_global(reinterpret_cast<const void*>(address), bytes, "an input tensor");
  }
  g_previous = c10::GetCPUAllocator();
  g_tracking.base = g_previous;
  c10::SetCPUAllocator(&g_tracking, /*priority=*/255);
}

void end_call() {
  if (g_previous != nullptr) c10::SetCPUAllocator(g_previous, /*priority=*/255);
  g_previous = nullptr;
  fastcl::sim::clear_globals();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastcl's CUDA kernels on the CPU simulator (tests only): torch.ops.fastcl_sim.*";
  m.def("begin_call", &begin_call, "register an op call's input storages and track its allocations");
  m.def("end_call", &end_call, "stop tracking and forget every registered range");
  m.def("set_schedule", &fastcl::sim::set_schedule, "0: threads in index order; else a seeded shuffle");
  m.def("mma_counters", &fastcl::sim::mma_counters, "per kernel: launches, mma, ldmatrix and its wavefronts");
  m.def("reset_mma_counters", &fastcl::sim::reset_mma_counters, "zero the mma counters");
  m.def("set_multiprocessor_count", &fastcl::sim::set_multiprocessor_count,
        "the SM count the ops split their tiles by; returns the one before");
}
