// The recurrent products of a window, C (B×N) = A (B×K) · S (K×N), written for AVX2 and FMA.
//
// A recurrent step multiplies a small batch (B = 32 rows) by a weight that is the same at every step
// of the window. A general BLAS call repacks that weight on every call and is tuned for large
// matrices; here each thread packs its own slice of the weight's columns once per window, into panels
// of 24 columns laid out in the order the micro-kernel reads them, and keeps them hot in its cache
// across the T steps. The micro-kernel holds a 4×24 tile of C in 12 of the 16 vector registers,
// and for each k loads 3 vectors of the panel and broadcasts 4 values of A: 12 FMAs per 7 loads.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

namespace gru_lm {

constexpr int kPanel = 24;  // columns of a packed panel (3 AVX vectors of 8 floats)
constexpr int kRows = 4;    // rows of A per micro-kernel call

// C[MR×8NV] = (ACC ? C : 0) + A[MR×K] · P[K×8NV]; A's rows lda apart, P a packed panel (8NV floats per k).
template <int MR, int NV, bool ACC>
inline void micro_kernel(int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc) {
  constexpr int NR = 8 * NV;
  __m256 acc[MR][NV];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[r][v] = ACC ? _mm256_loadu_ps(C + r * ldc + 8 * v) : _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) w[v] = _mm256_load_ps(P + k * NR + 8 * v);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(C + r * ldc + 8 * v, acc[r][v]);
}

// The last 1-3 rows of a block of rows.
template <int NV, bool ACC>
inline void rows_left(int64_t rows, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc) {
  switch (rows) {
    case 3: micro_kernel<3, NV, ACC>(K, A, lda, P, C, ldc); break;
    case 2: micro_kernel<2, NV, ACC>(K, A, lda, P, C, ldc); break;
    case 1: micro_kernel<1, NV, ACC>(K, A, lda, P, C, ldc); break;
    default: break;
  }
}

// One panel (NV vectors wide) against all B rows of A: full blocks of 4 rows, then the 1-3 left.
template <int NV, bool ACC>
inline void panel_rows(int64_t B, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc) {
  int64_t b = 0;
  for (; b + kRows <= B; b += kRows) micro_kernel<kRows, NV, ACC>(K, A + b * lda, lda, P, C + b * ldc, ldc);
  rows_left<NV, ACC>(B - b, K, A + b * lda, lda, P, C + b * ldc, ldc);
}

// A float buffer aligned to 32 bytes for the packed panels (vector loads of 8 floats).
struct AlignedFloats {
  float* p = nullptr;
  explicit AlignedFloats(int64_t n = 0) { resize(n); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  AlignedFloats(AlignedFloats&& o) noexcept : p(o.p) { o.p = nullptr; }
  AlignedFloats& operator=(AlignedFloats&& o) noexcept {
    std::swap(p, o.p);
    return *this;
  }
  ~AlignedFloats() { std::free(p); }
  void resize(int64_t n) {
    std::free(p);
    p = n ? static_cast<float*>(std::aligned_alloc(32, ((n * sizeof(float) + 31) / 32) * 32)) : nullptr;
  }
};

// The columns of S (K×N) that one part of the team computes, packed once per window. Columns come in
// runs (a run per gate: the part's units of r, of z, of n), each a multiple of 8 wide. get(k, n) reads
// S[k][n] from the weight as it is stored (S = Wᵀ for a forward product, W for a backward one).
class PackedColumns {
 public:
  struct Run {
    int64_t first;   // first column of S
    int64_t width;   // columns, a multiple of 8
    int64_t offset;  // floats into the packed buffer
  };

  template <typename Get>
  void pack(int64_t K, const std::vector<std::pair<int64_t, int64_t>>& runs, const Get& get) {
    K_ = K;
    runs_.clear();
    int64_t total = 0;
    for (const auto& [first, width] : runs) {
      runs_.push_back({first, width, total});
      total += K * width;
    }
    buffer_.resize(total);
    for (const Run& run : runs_) {
      float* out = buffer_.p + run.offset;
      for (int64_t c0 = 0; c0 < run.width; c0 += kPanel) {
        const int64_t nr = std::min<int64_t>(kPanel, run.width - c0);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t c = 0; c < nr; ++c) out[k * nr + c] = get(k, run.first + c0 + c);
        out += K * nr;
      }
    }
  }

  // C[:, run columns] (=|+=) A (B×K, rows lda apart) · S[:, run columns]; C's column n is at C + n.
  template <bool ACC>
  void multiply(int64_t B, const float* A, int64_t lda, float* C, int64_t ldc) const {
    for (const Run& run : runs_) {
      const float* P = buffer_.p + run.offset;
      for (int64_t c0 = 0; c0 < run.width; c0 += kPanel) {
        const int64_t nr = std::min<int64_t>(kPanel, run.width - c0);
        float* out = C + run.first + c0;
        if (nr == 24) panel_rows<3, ACC>(B, K_, A, lda, P, out, ldc);
        else if (nr == 16) panel_rows<2, ACC>(B, K_, A, lda, P, out, ldc);
        else panel_rows<1, ACC>(B, K_, A, lda, P, out, ldc);
        P += K_ * nr;
      }
    }
  }

 private:
  int64_t K_ = 0;
  std::vector<Run> runs_;
  AlignedFloats buffer_;
};

}  // namespace gru_lm
