// Which kernels run a window: the team kernels (recurrent_team.cpp) at the width of AVX-512 or of
// AVX2, or the BLAS path (window_kernels.cpp), decided once per call from what the build, the
// processor and the tensors allow.
//
// The team path needs a build for x86-64-v3 (AVX2 and FMA) or x86-64-v4 (AVX-512 F, BW, CD, DQ, VL),
// float32 tensors (float64 takes the BLAS path) and a hidden size that is a multiple of 8; bfloat16
// operands take it where the processor has AVX-512 BF16 but no AMX (bfloat16_isa), the BLAS path
// elsewhere. A build for x86-64-v4 has both widths and runs AVX-512 by default; a build for
// x86-64-v3 runs AVX2, except on a processor with AVX-512 (a cached v3 build, or one forced with
// GRU_LM_ASSUME_AVX2), where the BLAS path's AVX-512 kernels are twice the AVX2 width.
// GRU_LM_KERNELS=avx512, =avx2 or =blas overrides the choice where the build has that path
// (GRU_LM_KERNELS=python is handled in gru_lm/model/kernels.py, which then does not load this module).
#pragma once

#include <torch/extension.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "isa.h"

namespace gru_lm {

// The vector width the team kernels run at, or none (the BLAS path); avx512_bf16 is the AVX-512 team
// path with bfloat16 operands in its products (AVX-512 BF16's vdpbf16ps, float32 sums).
enum class TeamIsa { none, avx2, avx512, avx512_bf16 };

inline const char* name_of(TeamIsa isa) {
  return isa == TeamIsa::avx512_bf16 ? "avx512_bf16"
         : isa == TeamIsa::avx512    ? "avx512"
         : isa == TeamIsa::avx2      ? "avx2"
                                     : "blas";
}

// The kernels that a float32 window of a suitable size runs on this machine.
//
// What the processor has is read once. The environment is read at every call, that is once per window
// (each entry point asks once, before its time loop), not once per process: the tests and benchmarks
// switch between the paths by setting GRU_LM_KERNELS in the running process, after the module is
// loaded. getenv and a few strcmp are nothing beside a window's work, and nothing is allocated.
inline bool kernels_forced(const char* name) {
  const char* forced = std::getenv("GRU_LM_KERNELS");
  return forced && std::strcmp(forced, name) == 0;
}

inline TeamIsa preferred_isa() {
  if (!GRU_LM_HAVE_AVX2 || kernels_forced("blas")) return TeamIsa::none;
  if (kernels_forced("avx2")) return TeamIsa::avx2;
  if (GRU_LM_HAVE_AVX512) return TeamIsa::avx512;  // also for GRU_LM_KERNELS=avx512
#if GRU_LM_HAVE_AVX2
  static const bool avx512_cpu = __builtin_cpu_supports("avx512f");
  return avx512_cpu ? TeamIsa::none : TeamIsa::avx2;
#else
  return TeamIsa::none;
#endif
}

// "avx512", "avx2" or "blas": what preferred_isa() picks, for Python and the benchmarks' headers.
inline const char* preferred_kernels() { return name_of(preferred_isa()); }

// Whether this processor multiplies bfloat16 pairs in its AVX-512 units (AVX-512 BF16), read once.
inline bool has_avx512_bf16() {
#if GRU_LM_HAVE_AVX512
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

// Whether this processor has AMX tiles for bfloat16 (CPUID leaf 7, EDX bit 22), read once: there oneDNN's
// AMX products are the BLAS path's, and it stays the default for bfloat16 operands.
inline bool has_amx_bf16() {
#if GRU_LM_HAVE_AVX2
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 22) & 1u);
  }();
  return yes;
#else
  return false;
#endif
}

// The kernels of a window with bfloat16 operands: where float32 windows run at AVX-512 width, the bfloat16
// team path if the processor has AVX-512 BF16 and no AMX, or if GRU_LM_KERNELS=avx512 asks for it; the
// BLAS path otherwise (so GRU_LM_KERNELS=blas or =avx2 send it there).
inline TeamIsa bfloat16_isa() {
  if (preferred_isa() != TeamIsa::avx512 || !has_avx512_bf16()) return TeamIsa::none;
  return kernels_forced("avx512") || !has_amx_bf16() ? TeamIsa::avx512_bf16 : TeamIsa::none;
}

// "avx512_bf16" or "blas": the path a window with bfloat16 operands takes here (float32 tensors, hidden a
// multiple of 8), for Python and the benchmarks' headers.
inline const char* preferred_bfloat16_kernels() { return name_of(bfloat16_isa()); }

// Which team kernels run a window whose tensors are like `like`, of `hidden` units (none: the BLAS path).
inline TeamIsa team_isa(const at::Tensor& like, int64_t hidden, bool bfloat16_operands) {
  if (like.scalar_type() != at::kFloat || hidden % 8 != 0) return TeamIsa::none;
  return bfloat16_operands ? bfloat16_isa() : preferred_isa();
}

}  // namespace gru_lm
