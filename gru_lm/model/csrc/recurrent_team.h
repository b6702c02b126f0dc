// The team path of the window kernels (recurrent_team.cpp): the same arguments, in the same order, and
// the same results as the BLAS path's entry points in window_kernels.cpp, which call these when
// team_isa (dispatch.h) names a vector width, passed first. Float32 tensors, hidden size a multiple of
// 8; the width avx512_bf16 stands for bfloat16 operands in the products, so no bfloat16_operands argument.
// The forward entries take the window's input projections as gi, or as a table and ids (input_rows.h); the
// backward entries then take the ids and the table's rows too, and return the table's gradient for d_gi.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "dispatch.h"

#if GRU_LM_HAVE_AVX2
namespace gru_lm::team {

using at::Tensor;

std::vector<Tensor> gru_after_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                      const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids);
std::vector<Tensor> gru_after_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                       const Tensor& G, const Tensor& N, const Tensor& w_hh, bool has_bias,
                                       const c10::optional<Tensor>& ids, int64_t table_rows);
std::vector<Tensor> gru_before_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                       const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids);
std::vector<Tensor> gru_before_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                        const Tensor& RZ, const Tensor& Q, const Tensor& N, const Tensor& w_hh,
                                        bool has_bias, const c10::optional<Tensor>& ids, int64_t table_rows);
std::vector<Tensor> lstm_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
                                 const c10::optional<Tensor>& ids);
std::vector<Tensor> lstm_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT,
                                  const Tensor& out, const Tensor& C, const Tensor& G, const Tensor& w_hh,
                                  bool has_bias, const c10::optional<Tensor>& ids, int64_t table_rows);
Tensor rnn_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                   const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids);
std::vector<Tensor> rnn_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                 const Tensor& w_hh, bool has_bias, const c10::optional<Tensor>& ids,
                                 int64_t table_rows);

}  // namespace gru_lm::team
#endif  // GRU_LM_HAVE_AVX2
