// What this build of fastcl._C contains; setup.py and the JIT loader pass the macros.
#pragma once
#include <string>
#include <vector>

// The build passes bare tokens (FASTCL_VERSION_RAW=0.1.0, FASTCL_CUDA_ARCH_LIST_RAW=8.0/9.0+PTX):
// quotes do not survive every build path, so they are stringised here.
#define FASTCL_STR_(...) #__VA_ARGS__
#define FASTCL_STR(...) FASTCL_STR_(__VA_ARGS__)
#ifdef FASTCL_VERSION_RAW
#define FASTCL_VERSION FASTCL_STR(FASTCL_VERSION_RAW)
#else
#define FASTCL_VERSION "unknown"
#endif

namespace fastcl {

struct BuildInfo {
  std::string version;
  std::vector<std::string> backends;
  std::string cuda_version;
  std::string cuda_arch_list;
  std::string cpu_isa;  // the widest vector ISA the CPU kernels' clones use on this CPU
  bool debug;
};

std::string cpu_isa();  // defined in cpu/contrastive.cpp, next to the clones it describes

inline BuildInfo build_info() {
  BuildInfo info;
  info.version = FASTCL_VERSION;
  info.backends.push_back("cpu");
#ifdef WITH_CUDA
  info.backends.push_back("cuda");
  info.cuda_version = FASTCL_STR(FASTCL_CUDA_VERSION_RAW);
  info.cuda_arch_list = FASTCL_STR(FASTCL_CUDA_ARCH_LIST_RAW);
#endif
  info.cpu_isa = cpu_isa();
#ifdef FASTCL_DEBUG
  info.debug = true;
#else
  info.debug = false;
#endif
  return info;
}

}  // namespace fastcl
