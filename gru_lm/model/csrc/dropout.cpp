// Dropout masks from a counter-based hash, made in parallel.
//
// Element i of a mask is kept when the top 24 bits of a 32-bit hash of i (MurmurHash3's finaliser
// over i scrambled by the two seed words) are at least p·2²⁴. torch's uniform draws come from one
// sequential generator and cost more than the rest of a dropout; a hash of the index is a pure
// function, so the threads split the elements freely and the vector units run eight at a time.
// gru_lm/model/dropout.py computes the same hash with torch's integer operations where this is not
// built: the masks are equal bit for bit.
#include "dropout.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace gru_lm {
namespace {

inline uint32_t mix(uint32_t i, uint32_t lo, uint32_t hi) {
  uint32_t h = (i * 0x9E3779B9u ^ lo) + hi;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Values begin..end of a mask (the arguments by value, so that gcc vectorises the loop).
void fill(float* m, int64_t begin, int64_t end, uint32_t lo, uint32_t hi, uint32_t threshold, float scale) {
  for (int64_t i = begin; i < end; ++i) m[i] = (mix(static_cast<uint32_t>(i), lo, hi) >> 8) >= threshold ? scale : 0.0f;
}

// n values: 1 / (1 − p) where kept, 0 where dropped.
at::Tensor dropout_mask(int64_t n, double p, int64_t lo, int64_t hi) {
  TORCH_CHECK(n >= 0 && n < (int64_t{1} << 32), "dropout_mask: n out of range");
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout_mask: p must be in [0, 1)");
  at::Tensor mask = at::empty({n}, at::kFloat);
  float* m = mask.data_ptr<float>();
  const uint32_t threshold = static_cast<uint32_t>(std::llround(p * 16777216.0));
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const uint32_t l = static_cast<uint32_t>(lo), h = static_cast<uint32_t>(hi);
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) { fill(m, begin, end, l, h, threshold, scale); });
  return mask;
}

}  // namespace

void bind_dropout(pybind11::module& m) { m.def("dropout_mask", &dropout_mask); }

}  // namespace gru_lm
