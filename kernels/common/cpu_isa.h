// Instruction-set dispatch for the CPU kernels.
//
// The library is built for baseline x86-64 (SSE2) so it runs on any x86-64 machine. A hot loop is
// written once as an always-inline template and instantiated twice: as is, and inside a function
// marked MOPT_TARGET_AVX2, where the compiler vectorizes the same source with 256-bit AVX2
// instructions; cpu_has_avx2() picks one at run time. The math is IEEE fp32 either way (no FMA
// contraction), so both copies give the same bits. Functions inlined into the AVX2 copy come from
// headers compiled for the baseline, so nothing AVX2 leaks into code that runs without the check.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOPT_CPU_DISPATCH_AVX2 1
#define MOPT_TARGET_AVX2 __attribute__((target("avx2")))
#else
#define MOPT_CPU_DISPATCH_AVX2 0
#define MOPT_TARGET_AVX2
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MOPT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MOPT_ALWAYS_INLINE inline
#endif

/// Placed before an elementwise loop whose output may be its input (in place): iteration j reads
/// and writes index j only, so there is no dependence between iterations and the compiler may
/// vectorize without a runtime overlap check (which would fall back to scalar code in place).
#if defined(__clang__)
#define MOPT_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define MOPT_IVDEP _Pragma("GCC ivdep")
#else
#define MOPT_IVDEP
#endif

namespace mopt::kernels {

/// True when the CPU runs AVX2 code (checked once) and set_cpu_avx2_allowed did not turn it off.
bool cpu_has_avx2();

/// Lets tests and benchmarks run the baseline loops on an AVX2 machine (false) or restore the
/// default (true).
void set_cpu_avx2_allowed(bool allowed);

}  // namespace mopt::kernels
