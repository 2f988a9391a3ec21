#pragma once
/// \file
/// Instruction-set variants of the router's hot loops (internal to models/router). Every variant
/// runs the same element-wise IEEE operations in the same order, with floating-point contraction
/// off for every router source (models/CMakeLists.txt), so all of them give the same bits.

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MOESIM_NO_ROUTER_CLONES)
/// x86-64 with GCC: AVX2 and AVX-512 variants beside the baseline (SSE2) code, picked on the CPU
/// that runs them. None of them enables FMA.
#define MOESIM_ROUTER_X86_VARIANTS 1
/// The generic loop: an AVX2 clone picked at load time on CPUs that have it.
#define MOESIM_ROUTER_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOESIM_ROUTER_CLONES
#endif
