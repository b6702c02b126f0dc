// The recurrent products of a window with bfloat16 operands (train --dtype bfloat16) on CPUs with AVX-512
// BF16: C (B×N) = A (B×K) · S (K×N), A and S rounded to bfloat16 and the products summed in float32, with
// the same interface as PackedColumns<V>. The operands are rounded as the BLAS path rounds them; the sums
// stay float32 here, where the BLAS path's oneDNN products return bfloat16 results.
//
// vdpbf16ps multiplies 16 pairs of bfloat16 values and adds each pair's two products into one float32 lane:
// acc[n] += a[k]·s[k][n] + a[k+1]·s[k+1][n]. So the panels hold S as pairs along k, (s[k][n], s[k+1][n])
// next to each other for every column n, and the micro-kernel broadcasts the pair (a[k], a[k+1]) of a row
// of A as one 32-bit value: half the steps over k of the float32 kernel, each doing twice the work. A is
// rounded to bfloat16 once per product, into a buffer of the part's own; S once per window, when packed.
// The functions that use these instructions carry a target attribute, because the x86-64-v4 build level
// does not include AVX-512 BF16; dispatch.h runs them only where the processor has it.
#pragma once

#include "packed_gemm.h"

#if GRU_LM_HAVE_AVX512
#include <cstring>

#define GRU_LM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace gru_lm {

// The traits type that selects the bfloat16 team kernels: 16 float32 lanes, tiles of 8 rows by 3 vectors.
struct Avx512Bf16 {
  static constexpr int width = 16;
  static constexpr int rows = 8;
  static constexpr const char* name = "avx512_bf16";
};

// float32 to bfloat16, rounding to nearest even (as torch's conversion does); a NaN stays a NaN.
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// C[MR×·] = (ACC ? C : 0) + A[MR×2·K2] · P[2·K2 × NV vectors], A in bfloat16 rows lda apart, P a packed
// panel of pairs; the last vector of each row of C holds only the lanes in `last`.
template <int MR, int NV, bool ACC>
GRU_LM_BF16_TARGET inline void bf16_micro_kernel(int64_t K2, const uint16_t* A, int64_t lda, const uint16_t* P,
                                                 float* C, int64_t ldc, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v)
      acc[r][v] = ACC ? _mm512_maskz_loadu_ps(v + 1 < NV ? __mmask16(0xFFFF) : last, C + r * ldc + 16 * v)
                      : _mm512_setzero_ps();
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    __m512bh w[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) w[v] = (__m512bh)_mm512_load_si512(P + (k2 * NV + v) * 32);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, A + r * lda + 2 * k2, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, w[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(C + r * ldc + 16 * v, v + 1 < NV ? __mmask16(0xFFFF) : last, acc[r][v]);
}

// One panel against all B rows of A: blocks of 8 rows, then the rows left, each count its own kernel.
template <int NV, bool ACC>
GRU_LM_BF16_TARGET inline void bf16_panel_rows(int64_t B, int64_t K2, const uint16_t* A, int64_t lda,
                                               const uint16_t* P, float* C, int64_t ldc, __mmask16 last) {
  int64_t b = 0;
  for (; b + 8 <= B; b += 8) bf16_micro_kernel<8, NV, ACC>(K2, A + b * lda, lda, P, C + b * ldc, ldc, last);
  A += b * lda;
  C += b * ldc;
  switch (B - b) {
    case 7: bf16_micro_kernel<7, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    case 6: bf16_micro_kernel<6, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    case 5: bf16_micro_kernel<5, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    case 4: bf16_micro_kernel<4, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    case 3: bf16_micro_kernel<3, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    case 2: bf16_micro_kernel<2, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    case 1: bf16_micro_kernel<1, NV, ACC>(K2, A, lda, P, C, ldc, last); break;
    default: break;
  }
}

// Rows of A (B×K floats, rows lda apart) rounded to bfloat16 into `out` (rows 2·K2 apart; an odd K's
// last pair padded with zero), 16 values per conversion.
GRU_LM_BF16_TARGET inline void rows_to_bf16(int64_t B, int64_t K, const float* A, int64_t lda, uint16_t* out,
                                            int64_t K2) {
  for (int64_t b = 0; b < B; ++b) {
    uint16_t* row = out + b * 2 * K2;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, A + b * lda + k));
      _mm256_mask_storeu_epi16(row + k, m, (__m256i)h);
    }
    if (K % 2) row[K] = 0;
  }
}

// The columns of S that one part of the team computes, packed once per window as bfloat16 pairs along k.
class PackedColumnsBf16 {
 public:
  static constexpr int kPanel = 48;  // columns of a full panel: three vectors of 16

  PackedColumnsBf16() = default;
  PackedColumnsBf16(const PackedColumnsBf16&) = delete;  // base_ points into buffer_
  PackedColumnsBf16& operator=(const PackedColumnsBf16&) = delete;

  struct Run {
    int64_t first, width, offset;  // first column of S; columns (a multiple of 8); values into the buffer
  };

  template <typename Get>
  void pack(int64_t K, const std::vector<std::pair<int64_t, int64_t>>& runs, const Get& get) {
    K_ = K;
    K2_ = (K + 1) / 2;
    runs_.clear();
    int64_t total = 0;
    for (const auto& [first, width] : runs) {
      runs_.push_back({first, width, total});
      for (int64_t c0 = 0; c0 < width; c0 += kPanel) total += 2 * K2_ * padded(std::min<int64_t>(kPanel, width - c0));
    }
    buffer_.assign(total + 32, 0);  // 32 values of slack so the panels can start on a 64-byte boundary
    base_ = aligned(buffer_.data());
    for (const Run& run : runs_) {
      uint16_t* out = base_ + run.offset;
      for (int64_t c0 = 0; c0 < run.width; c0 += kPanel) {
        const int64_t nr = std::min<int64_t>(kPanel, run.width - c0), stride = padded(nr);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t c = 0; c < nr; ++c) out[((k / 2) * stride + c) * 2 + k % 2] = to_bf16(get(k, run.first + c0 + c));
        out += 2 * K2_ * stride;
      }
    }
  }

  // C[:, run columns] (=|+=) bf16(A) (B×K, rows lda apart) · S[:, run columns]; C's column n is at C + n.
  template <bool ACC>
  void multiply(int64_t B, const float* A, int64_t lda, float* C, int64_t ldc) {
    if (static_cast<int64_t>(a_.size()) < B * 2 * K2_ + 32) a_.assign(B * 2 * K2_ + 32, 0);
    uint16_t* a = aligned(a_.data());
    rows_to_bf16(B, K_, A, lda, a, K2_);
    for (const Run& run : runs_) {
      const uint16_t* P = base_ + run.offset;
      for (int64_t c0 = 0; c0 < run.width; c0 += kPanel) {
        const int64_t nr = std::min<int64_t>(kPanel, run.width - c0), vectors = padded(nr) / 16;
        const __mmask16 last = nr % 16 ? __mmask16((1u << (nr % 16)) - 1) : __mmask16(0xFFFF);
        float* out = C + run.first + c0;
        if (vectors == 3) bf16_panel_rows<3, ACC>(B, K2_, a, 2 * K2_, P, out, ldc, last);
        else if (vectors == 2) bf16_panel_rows<2, ACC>(B, K2_, a, 2 * K2_, P, out, ldc, last);
        else bf16_panel_rows<1, ACC>(B, K2_, a, 2 * K2_, P, out, ldc, last);
        P += 2 * K2_ * padded(nr);
      }
    }
  }

 private:
  static int64_t padded(int64_t columns) { return (columns + 15) / 16 * 16; }
  static uint16_t* aligned(uint16_t* p) {
    return reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(p) + 63) / 64 * 64);
  }

  int64_t K_ = 0, K2_ = 0;
  std::vector<Run> runs_;
  std::vector<uint16_t> buffer_, a_;  // the packed panels; this part's rows of A in bfloat16
  uint16_t* base_ = nullptr;
};

}  // namespace gru_lm
#endif  // GRU_LM_HAVE_AVX512

#if GRU_LM_HAVE_AVX2
namespace gru_lm {

// The packed-weight type of the team kernels at each vector traits type.
template <class V>
struct PackedFor {
  using type = PackedColumns<V>;
};
#if GRU_LM_HAVE_AVX512
template <>
struct PackedFor<Avx512Bf16> {
  using type = PackedColumnsBf16;
};
#endif
template <class V>
using Packed = typename PackedFor<V>::type;

}  // namespace gru_lm
#endif  // GRU_LM_HAVE_AVX2
