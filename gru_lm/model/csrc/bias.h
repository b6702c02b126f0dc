// The recurrent bias b_hh as both paths' element-wise passes read it (window_kernels.cpp,
// recurrent_team.cpp): always a contiguous vector, zeros for a layer without bias, so that the passes
// have one form.
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace gru_lm {

// The bias b (n values) made contiguous, or n zeros of `like`'s dtype and device where there is none.
inline at::Tensor bias_or_zeros(const c10::optional<at::Tensor>& b, int64_t n, const at::Tensor& like) {
  return b.has_value() ? b->contiguous() : at::zeros({n}, like.options());
}

}  // namespace gru_lm
