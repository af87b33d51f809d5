// What this build of fastcl._C contains; setup.py and the JIT loader pass the macros.
#pragma once
#include <string>
#include <vector>

#ifndef FASTCL_VERSION
#define FASTCL_VERSION "unknown"
#endif
#ifndef FASTCL_CUDA_ARCH_LIST
#define FASTCL_CUDA_ARCH_LIST ""
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
#ifdef CUDA_VERSION_STRING
  info.cuda_version = CUDA_VERSION_STRING;
#endif
  info.cuda_arch_list = FASTCL_CUDA_ARCH_LIST;
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
