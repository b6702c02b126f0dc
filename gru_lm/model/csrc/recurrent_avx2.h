// The AVX2 path of the window kernels (recurrent_avx2.cpp): the same arguments, in the same order, and
// the same results as the BLAS path's entry points in window_kernels.cpp, which call these when
// use_avx2 (dispatch.h) says so. Float32 only, hidden size a multiple of 8, exact products (no
// bfloat16 operands), hence no bfloat16_operands argument.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "dispatch.h"

#if GRU_LM_HAVE_AVX2
namespace gru_lm::avx2 {

using at::Tensor;

std::vector<Tensor> gru_after_forward(const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                      const c10::optional<Tensor>& b_hh);
std::vector<Tensor> gru_after_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& out, const Tensor& G,
                                       const Tensor& N, const Tensor& w_hh, bool has_bias);
std::vector<Tensor> gru_before_forward(const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                       const c10::optional<Tensor>& b_hh);
std::vector<Tensor> gru_before_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& out, const Tensor& RZ,
                                        const Tensor& Q, const Tensor& N, const Tensor& w_hh, bool has_bias);
std::vector<Tensor> lstm_forward(const Tensor& gi, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                 const c10::optional<Tensor>& b_hh);
std::vector<Tensor> lstm_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT, const Tensor& out,
                                  const Tensor& C, const Tensor& G, const Tensor& w_hh, bool has_bias);
Tensor rnn_forward(const Tensor& gi, const Tensor& h0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh);
std::vector<Tensor> rnn_backward(const Tensor& d_out, const Tensor& d_hT, const Tensor& out, const Tensor& w_hh,
                                 bool has_bias);

}  // namespace gru_lm::avx2
#endif  // GRU_LM_HAVE_AVX2
