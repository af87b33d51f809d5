// FASTCL_CLONES compiles a hot loop for x86-64-v4 (AVX-512), v3 (AVX2 + FMA) and the
// baseline, and picks one when the library loads, so one wheel runs everywhere at full width.
#pragma once
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTCL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTCL_CLONES
#endif
