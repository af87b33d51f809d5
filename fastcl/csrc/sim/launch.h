// Kernel launches and per-kernel attributes. Part of cuda_sim.h.
//   fastcl::sim::launch<kernel<float>>(grid, block, smem_bytes, args...)   ~ kernel<<<grid, block, smem>>>(args...)
//   fastcl::sim::set_max_dynamic_smem<kernel<float>>(bytes)               ~ cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
//   fastcl::sim::max_active_blocks_per_sm<kernel<float>>(threads, smem)   ~ cudaOccupancyMaxActiveBlocksPerMultiprocessor
#pragma once
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fastcl {
namespace sim {
namespace detail {

// g++ spells the kernel in here as "K = name<args>"; the runtime cuts it out for messages.
template <auto K>
const char* pretty() {
  return __PRETTY_FUNCTION__;
}

template <typename F> struct KernelParams;
template <typename... P> struct KernelParams<void (*)(P...)> {
  using tuple = std::tuple<std::decay_t<P>...>;
};

// One simulated thread: the parameters arrive by value on the fiber's stack (copied from the
// launch's tuple before checks start), then the kernel runs with the memory checks on.
template <auto K, typename... P>
__attribute__((noinline)) void body(P... p) {
  kernel_begin();
  K(p...);
  kernel_end();
}
template <auto K, typename Tuple, size_t... I>
void entry_impl(Tuple& t, std::index_sequence<I...>) {
  body<K, std::tuple_element_t<I, Tuple>...>(std::get<I>(t)...);
}
template <auto K, typename Tuple>
void entry(void* args) {
  entry_impl<K>(*static_cast<Tuple*>(args), std::make_index_sequence<std::tuple_size<Tuple>::value>{});
}

}  // namespace detail

// Runs the whole grid before returning; throws std::runtime_error naming the check, kernel,
// block and thread on the first error (or a launch over the device limits).
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, Args&&... args) {
  using Tuple = typename detail::KernelParams<decltype(Kernel)>::tuple;
  static_assert(sizeof...(Args) == std::tuple_size<Tuple>::value, "wrong number of kernel arguments");
  Tuple t{std::forward<Args>(args)...};  // converted to the parameter types, as a launch does
  const detail::LaunchSpec spec{reinterpret_cast<const void*>(Kernel), detail::pretty<Kernel>(), grid, block,
                                dynamic_smem_bytes, &detail::entry<Kernel, Tuple>, &t};
  detail::launch(spec);
}

template <auto Kernel>
void set_max_dynamic_smem(size_t bytes) {
  detail::set_max_dynamic_smem(reinterpret_cast<const void*>(Kernel), detail::pretty<Kernel>(), bytes);
}

template <auto Kernel>
int max_active_blocks_per_sm(int threads_per_block, size_t dynamic_smem_bytes) {
  return detail::max_active_blocks_per_sm(reinterpret_cast<const void*>(Kernel), threads_per_block, dynamic_smem_bytes);
}

}  // namespace sim
}  // namespace fastcl
