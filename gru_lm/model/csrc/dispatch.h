// Which kernels run a window: the AVX2 micro-kernels (recurrent_avx2.cpp) or the BLAS path
// (window_kernels.cpp), decided once per call from what the processor and the tensors allow.
//
// The AVX2 path needs a build for x86-64-v3 (AVX2 and FMA), float32 operands (mixed precision and
// float64 take the BLAS path) and a hidden size that is a multiple of 8. On processors with AVX-512 the
// BLAS path stays the default: MKL's AVX-512 kernels were measured there, the AVX2 micro-kernels were
// not. GRU_LM_KERNEL=avx2 or =blas overrides the choice.
#pragma once

#include <torch/extension.h>

#include <cstdlib>
#include <string>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#define GRU_LM_HAVE_AVX2 1
#else
#define GRU_LM_HAVE_AVX2 0
#endif

namespace gru_lm {

// "avx2" or "blas": the kernels that a float32 window of a suitable size runs on this machine.
inline std::string preferred_kernels() {
  const char* forced = std::getenv("GRU_LM_KERNEL");
  const std::string choice = forced ? forced : "";
  if (!GRU_LM_HAVE_AVX2 || choice == "blas") return "blas";
  if (choice == "avx2") return "avx2";
#if GRU_LM_HAVE_AVX2
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 ? "blas" : "avx2";
#else
  return "blas";
#endif
}

inline bool use_avx2(const at::Tensor& like, int64_t hidden, bool bf16_operands) {
  return !bf16_operands && like.scalar_type() == at::kFloat && hidden % 8 == 0 && preferred_kernels() == "avx2";
}

// The compiled sampler (sampler.cpp), where the AVX2 kernels exist.
void bind_sampler(pybind11::module& m);
// Dropout masks (dropout.cpp).
void bind_dropout(pybind11::module& m);

#if GRU_LM_HAVE_AVX2
using at::Tensor;
std::vector<Tensor> gru_after_forward_avx2(const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                           const c10::optional<Tensor>& b_hh);
std::vector<Tensor> gru_after_backward_avx2(const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                            const Tensor& G, const Tensor& N, const Tensor& w_hh, bool has_bias);
std::vector<Tensor> gru_before_forward_avx2(const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                            const c10::optional<Tensor>& b_hh);
std::vector<Tensor> gru_before_backward_avx2(const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                             const Tensor& RZ, const Tensor& Q, const Tensor& N, const Tensor& w_hh,
                                             bool has_bias);
std::vector<Tensor> lstm_forward_avx2(const Tensor& gi, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                      const c10::optional<Tensor>& b_hh);
std::vector<Tensor> lstm_backward_avx2(const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT, const Tensor& out,
                                       const Tensor& C, const Tensor& G, const Tensor& w_hh, bool has_bias);
Tensor rnn_forward_avx2(const Tensor& gi, const Tensor& h0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh);
std::vector<Tensor> rnn_backward_avx2(const Tensor& d_out, const Tensor& d_hT, const Tensor& out, const Tensor& w_hh,
                                      bool has_bias);
#endif

}  // namespace gru_lm
