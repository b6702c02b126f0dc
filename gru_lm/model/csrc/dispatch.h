// Which kernels run a window: the AVX2 micro-kernels (recurrent_avx2.cpp) or the BLAS path
// (window_kernels.cpp), decided once per call from what the processor and the tensors allow.
//
// The AVX2 path needs a build for x86-64-v3 (AVX2 and FMA), float32 operands (bfloat16 operands and
// float64 take the BLAS path) and a hidden size that is a multiple of 8. On processors with AVX-512 the
// BLAS path stays the default: MKL runs its AVX-512 kernels there, twice the vector width of the AVX2
// micro-kernels. GRU_LM_KERNELS=avx2 or =blas overrides the choice (GRU_LM_KERNELS=python is handled in
// gru_lm/model/kernels.py, which then does not load this module at all).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#define GRU_LM_HAVE_AVX2 1
#else
#define GRU_LM_HAVE_AVX2 0
#endif

namespace gru_lm {

// "avx2" or "blas": the kernels that a float32 window of a suitable size runs on this machine.
//
// What the processor has is read once. The environment is read at every call, that is once per window
// (each entry point asks once, before its time loop), not once per process: the tests switch between
// the two paths by setting GRU_LM_KERNELS in the running process, after the module is loaded. getenv
// and two strcmp are nothing beside a window's work, and nothing is allocated.
inline const char* preferred_kernels() {
  const char* forced = std::getenv("GRU_LM_KERNELS");
  if (!GRU_LM_HAVE_AVX2 || (forced && std::strcmp(forced, "blas") == 0)) return "blas";
  if (forced && std::strcmp(forced, "avx2") == 0) return "avx2";
#if GRU_LM_HAVE_AVX2
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 ? "blas" : "avx2";
#else
  return "blas";
#endif
}

// Whether a window whose tensors are like `like`, of `hidden` units, runs on the AVX2 path.
inline bool use_avx2(const at::Tensor& like, int64_t hidden, bool bfloat16_operands) {
  return !bfloat16_operands && like.scalar_type() == at::kFloat && hidden % 8 == 0 &&
         std::strcmp(preferred_kernels(), "avx2") == 0;
}

}  // namespace gru_lm
