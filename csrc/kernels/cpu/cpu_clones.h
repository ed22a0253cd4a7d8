// AGINGRT_CPU_CLONES: compile a CPU kernel's hot function for AVX-512, AVX2 and the baseline ISA, picked at load
// time (GNU ifunc), since the build targets baseline x86-64 (SSE2). Contraction into FMA is off in every clone
// (AVX-512F has FMA; the other targets do not), so with explicit lanes each clone performs the same IEEE operations
// in the same order and a kernel's output is bit-identical on every x86-64 CPU. Tests select one clone at a time by
// defining AGINGRT_CPU_CLONES themselves (tests/ops/cpu_kernels.py).
#pragma once

#ifndef AGINGRT_CPU_CLONES
#if defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__) && !defined(__clang__)
#define AGINGRT_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#else
#define AGINGRT_CPU_CLONES
#endif
#endif
