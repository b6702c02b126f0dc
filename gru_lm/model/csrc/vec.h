// The vector units the team kernels are written for, as two small traits types with the same members:
// Avx2 (8 floats per __m256, 16 registers) and, in a build for x86-64-v4, Avx512 (16 floats per
// __m512, 32 registers, and mask registers that let a load or store stop inside a vector). The
// micro-kernels of packed_gemm.h and the recurrences of recurrent_team.cpp are templates over one of
// them, so the same code runs at either width and the two can be measured side by side on one CPU.
#pragma once

#include "isa.h"

#if GRU_LM_HAVE_AVX2
#include <immintrin.h>

#include <cstdint>

namespace gru_lm {

struct Avx2 {
  using Reg = __m256;
  using Mask = int;        // every panel is whole vectors wide on this path: no mask is needed
  static constexpr int width = 8;
  static constexpr int rows = 4;     // rows of A per micro-kernel call: 4×3 accumulators of 16 registers
  static constexpr const char* name = "avx2";
  static Mask mask_of(int64_t) { return 0; }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_load_ps(p); }
  static Reg load_part(const float* p, Mask) { return _mm256_loadu_ps(p); }
  static void store_part(float* p, Reg v, Mask) { _mm256_storeu_ps(p, v); }
  static Reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
};

#if GRU_LM_HAVE_AVX512
struct Avx512 {
  using Reg = __m512;
  using Mask = __mmask16;  // the lanes of a panel's last vector that hold columns
  static constexpr int width = 16;
  static constexpr int rows = 8;     // 8×3 accumulators of 32 registers
  static constexpr const char* name = "avx512";
  // The lanes of the last vector of a panel `columns` wide.
  static Mask mask_of(int64_t columns) {
    const int64_t rest = columns % width;
    return rest ? static_cast<Mask>((1u << rest) - 1) : static_cast<Mask>(0xFFFF);
  }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_load_ps(p); }
  static Reg load_part(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store_part(float* p, Reg v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
  static Reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
};
#endif

}  // namespace gru_lm
#endif  // GRU_LM_HAVE_AVX2
