// The recurrent products of a window, C (B×N) = A (B×K) · S (K×N), on packed weights, at the width of
// a vector traits type V (vec.h: Avx2 or Avx512).
//
// A recurrent step multiplies a small batch (B = 32 rows) by a weight that is the same at every step
// of the window. A general BLAS call repacks that weight on every call and is tuned for large
// matrices; here each thread packs its own slice of the weight's columns once per window, into panels
// of three vectors' width (24 columns for AVX2, 48 for AVX-512) laid out in the order the micro-kernel
// reads them, and keeps them hot in its cache across the T steps. The micro-kernel holds a tile of C
// of V::rows rows by three vectors in registers (AVX2: 4×3 of 16, AVX-512: 8×3 of 32) and for each k
// loads three vectors of the panel and broadcasts V::rows values of A. A panel narrower than three
// vectors (the last of a run) is padded with zero columns to whole vectors, so its loads are whole;
// only the last vector of C is loaded and stored under a mask (AVX-512, where runs are multiples of 8
// but vectors 16 wide).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

#include "vec.h"

namespace gru_lm {

// How far ahead along k a micro-kernel of few rows asks for its panel (rows of the panel: about 4.6 KB at
// AVX-512). A block of at most V::rows / 2 rows (the sampler's one to four streams at AVX-512, or the rows a
// batch leaves after its full blocks) costs a cycle or two of arithmetic per k against up to three cache
// lines of weights, which come from L3 for a model larger than L2: the hardware prefetchers alone fall
// behind that stream, and a software prefetch this far ahead keeps it flowing. A full block (a training
// batch's rows) does enough arithmetic per line to hide the fetch, and a prefetch would only take load slots.
// A prefetch is a hint: one past the end of the buffer fetches nothing that matters and never faults.
constexpr int64_t kPrefetchRows = 24;

// C[MR×·] = (ACC ? C : 0) + A[MR×K] · P[K×NV vectors]; A's rows lda apart, P a packed panel (NV vectors
// per k); the last vector of each row of C holds only the lanes in `last`.
template <class V, int MR, int NV, bool ACC>
inline void micro_kernel(int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                         typename V::Mask last) {
  constexpr int W = V::width, NR = W * NV;
  typename V::Reg acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      const float* c = C + r * ldc + W * v;
      acc[r][v] = !ACC ? V::zero() : v + 1 < NV ? V::load_part(c, V::mask_of(W)) : V::load_part(c, last);
    }
  for (int64_t k = 0; k < K; ++k) {
    typename V::Reg w[NV];
    if constexpr (MR <= V::rows / 2) {  // few rows: the panel streams faster than the cache fetches it unasked
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v)
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(P + k * NR + W * v) +
                                                   kPrefetchRows * NR * sizeof(float)),
                     _MM_HINT_T0);
    }
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) w[v] = V::load(P + k * NR + W * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const typename V::Reg a = V::broadcast(A + r * lda + k);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(a, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) V::store_part(C + r * ldc + W * v, acc[r][v], v + 1 < NV ? V::mask_of(W) : last);
}

// One panel (NV vectors wide) against all B rows of A: full blocks of V::rows rows, then the rows left.
template <class V, int NV, bool ACC>
inline void panel_rows(int64_t B, int64_t K, const float* A, int64_t lda, const float* P, float* C, int64_t ldc,
                       typename V::Mask last) {
  constexpr int MR = V::rows;
  int64_t b = 0;
  for (; b + MR <= B; b += MR) micro_kernel<V, MR, NV, ACC>(K, A + b * lda, lda, P, C + b * ldc, ldc, last);
  A += b * lda;
  C += b * ldc;
  switch (B - b) {  // a switch over the row counts a block can have left, each its own unrolled kernel
    case 7: if constexpr (MR > 7) micro_kernel<V, 7, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    case 6: if constexpr (MR > 6) micro_kernel<V, 6, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    case 5: if constexpr (MR > 5) micro_kernel<V, 5, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    case 4: if constexpr (MR > 4) micro_kernel<V, 4, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    case 3: micro_kernel<V, 3, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    case 2: micro_kernel<V, 2, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    case 1: micro_kernel<V, 1, NV, ACC>(K, A, lda, P, C, ldc, last); break;
    default: break;
  }
}

// A float buffer aligned to 64 bytes for the packed panels (aligned vector loads of up to 16 floats).
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
    p = n ? static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64)) : nullptr;
  }
};

// The columns of S (K×N) that one part of the team computes, packed once per window. Columns come in
// runs (a run per gate: the part's units of r, of z, of n), each a multiple of 8 wide. get(k, n) reads
// S[k][n] from the weight as it is stored (S = Wᵀ for a forward product, W for a backward one).
template <class V>
class PackedColumns {
 public:
  static constexpr int kPanel = 3 * V::width;  // columns of a full panel

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
      for (int64_t c0 = 0; c0 < width; c0 += kPanel) total += K * padded(std::min<int64_t>(kPanel, width - c0));
    }
    buffer_.resize(total);
    for (const Run& run : runs_) {
      float* out = buffer_.p + run.offset;
      for (int64_t c0 = 0; c0 < run.width; c0 += kPanel) {
        const int64_t nr = std::min<int64_t>(kPanel, run.width - c0), stride = padded(nr);
        // in blocks of 16 values of k, column by column within a block: the weight's values a block
        // reads stay in cache whether the stored weight runs along k (S = Wᵀ) or along the columns (S = W)
        for (int64_t k0 = 0; k0 < K; k0 += 16)
          for (int64_t c = 0; c < stride; ++c)
            for (int64_t k = k0; k < std::min<int64_t>(K, k0 + 16); ++k)
              out[k * stride + c] = c < nr ? get(k, run.first + c0 + c) : 0.0f;
        out += K * stride;
      }
    }
  }

  // C[:, run columns] (=|+=) A (B×K, rows lda apart) · S[:, run columns]; C's column n is at C + n.
  template <bool ACC>
  void multiply(int64_t B, const float* A, int64_t lda, float* C, int64_t ldc) const {
    for (const Run& run : runs_) {
      const float* P = buffer_.p + run.offset;
      for (int64_t c0 = 0; c0 < run.width; c0 += kPanel) {
        const int64_t nr = std::min<int64_t>(kPanel, run.width - c0), vectors = padded(nr) / V::width;
        const typename V::Mask last = V::mask_of(nr);
        float* out = C + run.first + c0;
        if (vectors == 3) panel_rows<V, 3, ACC>(B, K_, A, lda, P, out, ldc, last);
        else if (vectors == 2) panel_rows<V, 2, ACC>(B, K_, A, lda, P, out, ldc, last);
        else panel_rows<V, 1, ACC>(B, K_, A, lda, P, out, ldc, last);
        P += K_ * padded(nr);
      }
    }
  }

 private:
  // Columns rounded up to whole vectors: the row length of a panel in the buffer.
  static int64_t padded(int64_t columns) { return (columns + V::width - 1) / V::width * V::width; }

  int64_t K_ = 0;
  std::vector<Run> runs_;
  AlignedFloats buffer_;
};

}  // namespace gru_lm
