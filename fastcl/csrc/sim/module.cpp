// The kernel's module as the checks need it: its read-only ranges, its TLS segment (where the
// `static thread_local` arrays that __shared__ expands to live) and, from .symtab, the TLS
// symbols in that segment, each classified as a __shared__ array of the running kernel, of
// another kernel (one with a fastcl::sim::launch instance), of neither (a device function's,
// usable by any kernel) or a thread-local of library code (pybind11, std, torch). The static shared
// bytes of a kernel are the sizes of the TLS symbols nested in it (what -O1 kept).
// Compiled without instrumentation; cached per module and per kernel, since launches are many.
#include <cxxabi.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace module_impl {

struct FindArg {
  uintptr_t addr;
  KernelModule* mod;
};

int find_module_cb(dl_phdr_info* info, size_t, void* data) {
  auto* want = static_cast<FindArg*>(data);
  bool hit = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && want->addr - lo < ph.p_memsz) hit = true;
  }
  if (!hit) return 0;
  KernelModule& m = *want->mod;
  m.path = info->dlpi_name && *info->dlpi_name ? info->dlpi_name : "/proc/self/exe";
  m.base = info->dlpi_addr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    if ((ph.p_type == PT_LOAD && !(ph.p_flags & PF_W)) || ph.p_type == PT_GNU_RELRO) m.ro.emplace_back(lo, lo + ph.p_memsz);
    if (ph.p_type == PT_TLS) {
      m.tls_size = ph.p_memsz;
      m.tls_modid = info->dlpi_tls_modid;
    }
  }
  return 1;
}

std::string demangle(const char* mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : mangled;
  std::free(d);
  return out;
}

// Thread-locals of the libraries a module is built with. Anything else is taken to be a
// __shared__ array: the simulator cannot tell a device function's from host code's.
bool is_library(std::string name) {
  static const char* const kGuard = "guard variable for ";
  if (name.rfind(kGuard, 0) == 0) name.erase(0, std::char_traits<char>::length(kGuard));
  for (const char* ns : {"pybind11::", "std::", "__gnu_cxx::", "c10::", "at::", "torch::", "caffe2::", "fastcl::sim::"})
    if (name.rfind(ns, 0) == 0) return true;
  return false;
}

// The kernels launched through fastcl::sim::launch, as prefixes of their local statics'
// demangled names: each has a detail::body<&kernel, ...> instance, demangled either as
// "body<&ns::k, ..." (a plain function: its statics read "ns::k(params)::s") or as
// "body<&(void ns::k<T>(params)), ..." (a template: "void ns::k<T>(params)::s").
std::string kernel_prefix(const std::string& body) {
  const size_t at = body.find("body<&");
  if (at == std::string::npos) return "";
  size_t i = at + 6;
  const bool paren = i < body.size() && body[i] == '(';
  if (paren) ++i;
  int depth = 0;
  const size_t start = i;
  for (; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '<' || c == '(') ++depth;
    else if ((c == '>' || c == ')') && depth > 0) --depth;
    else if (depth == 0 && (paren ? c == ')' : (c == ',' || c == '>'))) break;
  }
  if (i >= body.size() || i == start) return "";
  return body.substr(start, i - start) + (paren ? "::" : "(");
}

// The module file's symbol table, mapped for as long as the process runs (kernels are looked up
// in it on their first launch).
struct SymbolTable {
  const char* base = nullptr;
  const ElfW(Sym)* sym = nullptr;
  const char* str = nullptr;
  size_t n = 0;

  explicit SymbolTable(const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size > static_cast<off_t>(sizeof(ElfW(Ehdr)))) {
      void* m = mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (m != MAP_FAILED) base = static_cast<const char*>(m);
    }
    close(fd);
    if (!base) return;
    const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(base);
    const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(base + eh->e_shoff);
    for (int type : {SHT_SYMTAB, SHT_DYNSYM})  // .symtab has the local symbols; .dynsym if stripped
      for (int s = 0; s < eh->e_shnum && !sym; ++s)
        if (static_cast<int>(sh[s].sh_type) == type) {
          sym = reinterpret_cast<const ElfW(Sym)*>(base + sh[s].sh_offset);
          str = base + sh[sh[s].sh_link].sh_offset;
          n = sh[s].sh_size / sizeof(ElfW(Sym));
        }
  }
};

struct ModuleEntry {
  KernelModule mod;
  std::unique_ptr<SymbolTable> symtab;
};
std::map<uintptr_t, ModuleEntry> g_modules;      // by load base
std::map<const void*, KernelInfo> g_kernels;     // by kernel address

ModuleEntry& module_of(const void* kernel) {
  KernelModule m;
  FindArg want{reinterpret_cast<uintptr_t>(kernel), &m};
  dl_iterate_phdr(find_module_cb, &want);
  auto it = g_modules.find(m.base);
  if (it != g_modules.end() && it->second.mod.path == m.path) return it->second;
  ModuleEntry& e = g_modules[m.base];
  e.mod = std::move(m);
  e.symtab = std::make_unique<SymbolTable>(e.mod.path);
  const SymbolTable& t = *e.symtab;
  for (size_t i = 0; i < t.n; ++i) {
    if (ELF64_ST_TYPE(t.sym[i].st_info) != STT_TLS || t.sym[i].st_size == 0) continue;
    TlsSymbol s{t.sym[i].st_value, t.sym[i].st_size, t.str + t.sym[i].st_name, "", "", false};
    s.name = demangle(s.mangled.c_str());
    s.library = is_library(s.name);
    e.mod.tls.push_back(std::move(s));
  }
  std::vector<std::string> kernels;
  for (size_t i = 0; i < t.n; ++i)
    if (ELF64_ST_TYPE(t.sym[i].st_info) == STT_FUNC &&
        std::strncmp(t.str + t.sym[i].st_name, "_ZN6fastcl3sim6detail4bodyI", 27) == 0) {
      const std::string k = kernel_prefix(demangle(t.str + t.sym[i].st_name));
      if (!k.empty()) kernels.push_back(k);
    }
  for (TlsSymbol& s : e.mod.tls)
    for (const std::string& k : kernels)
      if (s.name.rfind(k, 0) == 0) s.kernel = k;
  auto& v = e.mod.tls;
  std::sort(v.begin(), v.end(), [](const TlsSymbol& a, const TlsSymbol& b) { return a.lo < b.lo; });
  v.erase(std::unique(v.begin(), v.end(), [](const TlsSymbol& a, const TlsSymbol& b) { return a.lo == b.lo; }), v.end());
  return e;
}

}  // namespace module_impl

const KernelInfo& kernel_info(const void* kernel) {
  using namespace module_impl;
  auto it = g_kernels.find(kernel);
  if (it != g_kernels.end()) return it->second;
  ModuleEntry& e = module_of(kernel);
  KernelInfo& k = g_kernels[kernel];
  k.mod = &e.mod;
  k.own.assign(e.mod.tls.size(), 0);
  k.usable.assign(e.mod.tls.size(), 0);
  const SymbolTable& t = *e.symtab;
  const uintptr_t off = reinterpret_cast<uintptr_t>(kernel) - e.mod.base;
  for (size_t i = 0; i < t.n && k.mangled.empty(); ++i)
    if (ELF64_ST_TYPE(t.sym[i].st_info) == STT_FUNC && t.sym[i].st_value == off &&
        std::string(t.str + t.sym[i].st_name).rfind("_Z", 0) == 0)
      k.mangled = t.str + t.sym[i].st_name;
  if (!k.mangled.empty()) {
    // A function's local static `s` is _ZZ<function encoding>E<name>: _ZZN2ns1kEPfE1s for ns::k(float*).
    const std::string prefix = "_ZZ" + k.mangled.substr(2) + "E";
    for (size_t i = 0; i < e.mod.tls.size(); ++i)
      if (e.mod.tls[i].mangled.rfind(prefix, 0) == 0) {
        k.own[i] = 1;
        k.static_smem += e.mod.tls[i].size;
      }
  }
  // Shared memory for this kernel: its own arrays and those of no known kernel (a device
  // function's); not another kernel's, nor a library's thread-locals. Without the kernel's
  // symbol, every array counts.
  for (size_t i = 0; i < e.mod.tls.size(); ++i) {
    const TlsSymbol& s = e.mod.tls[i];
    k.usable[i] = !s.library && (k.own[i] || s.kernel.empty() || k.mangled.empty());
  }
  return k;
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl
