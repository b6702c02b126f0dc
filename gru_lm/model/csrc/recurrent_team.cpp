// Whole-window recurrences for CPUs with AVX2 and FMA or AVX-512: the same equations, buffers and results
// layout as the BLAS path of window_kernels.cpp, with the time loop run by a team of threads (team.h)
// that each own a slice of the hidden units. Each recurrence is a template over the vector traits of
// vec.h; the entry points at the end run it at the width dispatch.h chose.
//
// A part of the team owns units [j0, j1). It packs, once per window, the columns of the recurrent
// weight that produce its units' gates (packed_gemm.h), so each thread reads only its own slice of the
// weight at every step, from its own cache. Per step it computes its units' gates for all B rows, the
// element-wise pass for those units, and waits at a barrier: the next step's product needs the whole
// new state. The backward owns units the same way: its element-wise pass gives the gate gradients of
// its units, a barrier, then the product that carries the state gradient back to its units. That
// product reads the gate gradients of all units but writes only the part's own units, which are all
// that the part's next element-wise pass reads; so the product opens the next step instead of closing
// this one, and a step of the backward needs one barrier (the GRU with reset before the product, two),
// over T + 1 steps: the last one is the product for the initial state alone.
#include "recurrent_team.h"

#include <torch/extension.h>

#include <utility>
#include <vector>

#include "bias.h"
#include "dispatch.h"
#include "elementwise.h"
#include "input_rows.h"

#if GRU_LM_HAVE_AVX2
#include "packed_gemm.h"
#include "packed_gemm_bf16.h"
#include "products.h"
#include "team.h"

namespace gru_lm::team {
namespace {

constexpr int64_t kMinUnitsPerPart = 32;  // fewer units than this per thread are not worth a barrier per step

// The runs of columns of part p: its units of each of the `gates` gates, the gates H apart.
std::vector<std::pair<int64_t, int64_t>> gate_columns(int64_t j0, int64_t j1, int64_t H, int gates) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int g = 0; g < gates; ++g) runs.emplace_back(g * H + j0, j1 - j0);
  return runs;
}

// Pack part p's columns of the forward product h · W[rows]ᵀ, for W (N×H) rows `row0`.. (S[k][n] = W[row0 + n][k]).
template <class P>
void pack_forward(P& packed, const float* W, int64_t H, int64_t row0, int64_t j0, int64_t j1, int gates) {
  packed.pack(H, gate_columns(j0, j1, H, gates), [&](int64_t k, int64_t n) { return W[(row0 + n) * H + k]; });
}

// Pack part p's columns of the backward product dG · W[rows] (S[k][n] = W[row0 + k][n]): the state
// gradient of its units from the gate gradients of all units (K = rows).
template <class P>
void pack_backward(P& packed, const float* W, int64_t H, int64_t row0, int64_t rows, int64_t j0,
                   int64_t j1) {
  packed.pack(rows, {{j0, j1 - j0}}, [&](int64_t k, int64_t n) { return W[(row0 + k) * H + n]; });
}

// Rows row0.. of dW (as many as dA has columns) = Σ over the window's T·B rows of dAᵀ · prev, for dA
// (T×B×width, contiguous: the library reads its transpose in place) and prev (T·B × H, its first T·B
// rows): the recurrent weight gradient of a window, one large product that the BLAS does well (it is
// not on the step-by-step path). With bfloat16 operands its operands are rounded to bfloat16 too, as
// the BLAS path's are.
void weight_gradient_into(Tensor& dW, int64_t row0, const Tensor& dA, const Tensor& prev, bool bfloat16_operands) {
  const int64_t TB = dA.size(0) * dA.size(1), H = dW.size(1);
  Tensor into = dW.narrow(0, row0, dA.size(2));
  const Tensor a = dA.view({TB, -1}).t(), b = prev.view({-1, H}).narrow(0, 0, TB);
  if (bfloat16_operands)
    into.copy_(at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)));
  else
    mm_into(into, a, b);
}

Tensor weight_gradient(const Tensor& dA, const Tensor& prev, int64_t H, bool bfloat16_operands) {
  Tensor dW = at::empty({dA.size(2), H}, dA.options());
  weight_gradient_into(dW, 0, dA, prev, bfloat16_operands);
  return dW;
}

// Whether the vector traits V multiply bfloat16 operands (packed_gemm_bf16.h).
template <class V>
constexpr bool bf16_products = false;
#if GRU_LM_HAVE_AVX512
template <>
constexpr bool bf16_products<Avx512Bf16> = true;
#endif

}  // namespace

// ---- GRU, reset after the product ------------------------------------------------------------------

template <class V>
std::vector<Tensor> gru_after_forward_on(const Tensor& gi_in, const Tensor& h0, const Tensor& w_hh,
                                      const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids) {
  const int64_t H = h0.size(1);
  const InputRows x(gi_in, ids, 3 * H);
  const Tensor& gi = x.tensor();
  const Tensor w = w_hh.contiguous();
  const int64_t T = x.steps(), B = x.batch();
  const Tensor bias_t = bias_or_zeros(b_hh, 3 * H, gi);
  const float* bias = bias_t.data_ptr<float>();
  Tensor out = at::empty({T + 1, B, H}, gi.options()), G = at::empty({T, B, 3 * H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  out[0].copy_(h0);
  float *o = out.data_ptr<float>(), *g = G.data_ptr<float>(), *n = N.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed(parts);
  run_team(
      parts, T, 1,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_forward(packed[p], W, H, 0, j0, j1, 3);
      },
      [&](int p, int64_t t, int) {
        auto [j0, j1] = slice_of(p, parts, H);
        float* gt = g + t * B * 3 * H;
        const float* hp = o + t * B * H;
        packed[p].template multiply<false>(B, hp, H, gt, 3 * H);
        for (int64_t b = 0; b < B; ++b)
          gru_after_fwd_row(H, j0, j1, x.row(t * B + b), bias, gt + b * 3 * H, hp + b * H,
                            n + (t * B + b) * H, o + ((t + 1) * B + b) * H);
      });
  return {out, G, N};
}

template <class V>
std::vector<Tensor> gru_after_backward_on(const Tensor& d_out_in, const Tensor& d_hT, const Tensor& out, const Tensor& G,
                                       const Tensor& N, const Tensor& w_hh, bool has_bias,
                                       const c10::optional<Tensor>& ids, int64_t table_rows) {
  const Tensor d_out = d_out_in.contiguous(), w = w_hh.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = N.size(2);
  const TableGradient d_table(ids, table_rows, 3 * H, G);
  // dG holds [da_r, da_z, da_n ⊙ r], what the weight gradient multiplies; d_gi's n part is da_n itself,
  // kept for the whole window where d_gi is returned, and for one step (B rows, reused) where the
  // element-wise pass sums it into a table.
  Tensor dG = at::empty({T, B, 3 * H}, G.options());
  Tensor dAN = at::empty({d_table.wanted() ? 1 : T, B, H}, G.options());
  Tensor dh = d_hT.contiguous().clone();
  float *dg = dG.data_ptr<float>(), *dan = dAN.data_ptr<float>(), *dhp = dh.data_ptr<float>();
  auto dan_row = [&](int64_t t, int64_t b) { return dan + ((d_table.wanted() ? 0 : t) * B + b) * H; };
  const float *g = G.data_ptr<float>(), *n = N.data_ptr<float>(), *o = out.data_ptr<float>();
  const float *dout = d_out.data_ptr<float>(), *W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed(parts);
  run_team(
      parts, T + 1, 1,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_backward(packed[p], W, H, 0, 3 * H, j0, j1);
      },
      [&](int p, int64_t s, int) {
        const int64_t t = T - 1 - s;
        auto [j0, j1] = slice_of(p, parts, H);
        // dh += dG[t + 1] W_hh for this part's units (all gates of all units feed each of them)
        if (s > 0) packed[p].template multiply<true>(B, dg + (t + 1) * B * 3 * H, 3 * H, dhp, H);
        if (s == T) return;
        for (int64_t b = 0; b < B; ++b) {  // the gate gradients of this part's units; dh becomes dh ⊙ z
          const int64_t o1 = (t * B + b) * H, o3 = (t * B + b) * 3 * H;
          gru_after_bwd_row(H, j0, j1, dout + o1, dhp + b * H, g + o3, n + o1, o + o1, dg + o3, dan_row(t, b),
                            dhp + b * H);
          if (d_table.wanted()) {  // d_gi = [da_r, da_z, da_n]
            d_table.add(t * B + b, 0, dg + o3, j0, j1);
            d_table.add(t * B + b, H, dg + o3 + H, j0, j1);
            d_table.add(t * B + b, 2 * H, dan_row(t, b), j0, j1);
          }
        }
      });
  Tensor dW = weight_gradient(dG, out, H, bf16_products<V>);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  if (d_table.wanted()) return {d_table.or_rows(dG), dh, dW, db};
  dG.narrow(2, 2 * H, H).copy_(dAN);  // now d_gi = [da_r, da_z, da_n]
  return {dG, dh, dW, db};
}

// ---- GRU, reset before the product -----------------------------------------------------------------

template <class V>
std::vector<Tensor> gru_before_forward_on(const Tensor& gi_in, const Tensor& h0, const Tensor& w_hh,
                                       const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids) {
  const int64_t H = h0.size(1);
  const InputRows x(gi_in, ids, 3 * H);
  const Tensor& gi = x.tensor();
  const Tensor w = w_hh.contiguous();
  const int64_t T = x.steps(), B = x.batch();
  const Tensor bias_t = bias_or_zeros(b_hh, 3 * H, gi);
  const float* bias = bias_t.data_ptr<float>();
  Tensor out = at::empty({T + 1, B, H}, gi.options()), RZ = at::empty({T, B, 2 * H}, gi.options());
  Tensor Q = at::empty({T, B, H}, gi.options()), N = at::empty({T, B, H}, gi.options());
  out[0].copy_(h0);
  float *o = out.data_ptr<float>(), *rz = RZ.data_ptr<float>(), *q = Q.data_ptr<float>(), *n = N.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed_rz(parts), packed_n(parts);
  run_team(
      parts, T, 2,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_forward(packed_rz[p], W, H, 0, j0, j1, 2);
        pack_forward(packed_n[p], W, H, 2 * H, j0, j1, 1);
      },
      [&](int p, int64_t t, int phase) {
        auto [j0, j1] = slice_of(p, parts, H);
        const float* hp = o + t * B * H;
        if (phase == 0) {  // r and z of this part's units, and q = r ⊙ h
          float* rzt = rz + t * B * 2 * H;
          packed_rz[p].template multiply<false>(B, hp, H, rzt, 2 * H);
          for (int64_t b = 0; b < B; ++b)
            gru_before_gates_row(H, j0, j1, x.row(t * B + b), bias, rzt + b * 2 * H, hp + b * H,
                                 q + (t * B + b) * H);
        } else {  // the candidate from q of all units, and the new state of this part's units
          float* nt = n + t * B * H;
          packed_n[p].template multiply<false>(B, q + t * B * H, H, nt, H);
          for (int64_t b = 0; b < B; ++b)
            gru_before_state_row(H, j0, j1, x.row(t * B + b) + 2 * H, bias + 2 * H,
                                 rz + (t * B + b) * 2 * H + H, nt + b * H, hp + b * H, o + ((t + 1) * B + b) * H);
        }
      });
  return {out, RZ, Q, N};
}

template <class V>
std::vector<Tensor> gru_before_backward_on(const Tensor& d_out_in, const Tensor& d_hT, const Tensor& out,
                                        const Tensor& RZ, const Tensor& Q, const Tensor& N, const Tensor& w_hh,
                                        bool has_bias, const c10::optional<Tensor>& ids, int64_t table_rows) {
  const Tensor d_out = d_out_in.contiguous(), w = w_hh.contiguous();
  const int64_t T = RZ.size(0), B = RZ.size(1), H = N.size(2);
  const TableGradient d_table(ids, table_rows, 3 * H, RZ);
  // darz (the gradients of r and z) and dan (of the candidate) are written by each part for its own units
  // and read by every part after the next barrier; each is kept for the whole window, step by step, so
  // that the weight gradient multiplies them in place (a product of a column slice of dA would copy the
  // slice first). dA, the same gradients in d_gi's layout, is written only where d_gi is returned: a
  // window that read a table sums darz and dan into it. dq holds this part's own units only.
  Tensor dA = d_table.wanted() ? Tensor() : at::empty({T, B, 3 * H}, RZ.options());
  Tensor dan = at::empty({T, B, H}, RZ.options()), dq = at::empty({B, H}, RZ.options());
  Tensor darz = at::empty({T, B, 2 * H}, RZ.options()), dh = d_hT.contiguous().clone();
  float *da = dA.defined() ? dA.data_ptr<float>() : nullptr, *dqp = dq.data_ptr<float>(), *dhp = dh.data_ptr<float>();
  auto da_row = [&](int64_t i) { return da ? da + 3 * i * H : nullptr; };  // position i's row of dA
  const float *rz = RZ.data_ptr<float>(), *n = N.data_ptr<float>(), *o = out.data_ptr<float>();
  const float *dout = d_out.data_ptr<float>(), *W = w.data_ptr<float>();
  float *const drz0 = darz.data_ptr<float>(), *const dn0 = dan.data_ptr<float>();
  auto drz = [&](int64_t t) { return drz0 + t * B * 2 * H; };
  auto dn = [&](int64_t t) { return dn0 + t * B * H; };
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed_n(parts), packed_rz(parts);
  run_team(
      parts, T + 1, 2,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_backward(packed_n[p], W, H, 2 * H, H, j0, j1);
        pack_backward(packed_rz[p], W, H, 0, 2 * H, j0, j1);
      },
      [&](int p, int64_t s, int phase) {
        const int64_t t = T - 1 - s;
        auto [j0, j1] = slice_of(p, parts, H);
        if (phase == 0) {
          // dh += [da_r, da_z] W_rz of step t + 1 for this part's units
          if (s > 0) packed_rz[p].template multiply<true>(B, drz(t + 1), 2 * H, dhp, H);
          if (s == T) return;
          for (int64_t b = 0; b < B; ++b) {  // da_n, da_z of this part's units; dh becomes dh ⊙ z
            const int64_t o1 = (t * B + b) * H;
            gru_before_bwd_row1(H, j0, j1, dout + o1, dhp + b * H, rz + 2 * o1, n + o1, o + o1, da_row(t * B + b),
                                dn(t) + b * H, drz(t) + b * 2 * H, dhp + b * H);
          }
        } else if (s < T) {  // dq = da_n W_hn for this part's units, then da_r and dh += dq ⊙ r
          packed_n[p].template multiply<false>(B, dn(t), H, dqp, H);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t o1 = (t * B + b) * H;
            gru_before_bwd_row2(H, j0, j1, dqp + b * H, rz + 2 * o1, o + o1, da_row(t * B + b), drz(t) + b * 2 * H,
                                dhp + b * H);
            if (d_table.wanted()) {  // this position's gate gradients are whole now
              d_table.add(t * B + b, 0, drz(t) + b * 2 * H, j0, j1);
              d_table.add(t * B + b, H, drz(t) + b * 2 * H + H, j0, j1);
              d_table.add(t * B + b, 2 * H, dn(t) + b * H, j0, j1);
            }
          }
        }
      });
  Tensor dW = at::empty({3 * H, H}, RZ.options());
  weight_gradient_into(dW, 0, darz, out, bf16_products<V>);
  weight_gradient_into(dW, 2 * H, dan, Q, bf16_products<V>);
  Tensor db = has_bias ? at::cat({darz.sum({0, 1}), dan.sum({0, 1})}) : Tensor();
  return {d_table.or_rows(dA), dh, dW, db};
}

// ---- LSTM ---------------------------------------------------------------------------------------------

template <class V>
std::vector<Tensor> lstm_forward_on(const Tensor& gi_in, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                 const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids) {
  const int64_t H = h0.size(1);
  const InputRows x(gi_in, ids, 4 * H);
  const Tensor& gi = x.tensor();
  const Tensor w = w_hh.contiguous();
  const int64_t T = x.steps(), B = x.batch();
  const Tensor bias_t = bias_or_zeros(b_hh, 4 * H, gi);
  const float* bias = bias_t.data_ptr<float>();
  Tensor out = at::empty({T + 1, B, H}, gi.options()), C = at::empty({T + 1, B, H}, gi.options());
  Tensor G = at::empty({T, B, 4 * H}, gi.options());
  out[0].copy_(h0);
  C[0].copy_(c0);
  float *o = out.data_ptr<float>(), *c = C.data_ptr<float>(), *g = G.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed(parts);
  run_team(
      parts, T, 1,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_forward(packed[p], W, H, 0, j0, j1, 4);
      },
      [&](int p, int64_t t, int) {
        auto [j0, j1] = slice_of(p, parts, H);
        float* gt = g + t * B * 4 * H;
        packed[p].template multiply<false>(B, o + t * B * H, H, gt, 4 * H);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t o1 = (t * B + b) * H;
          lstm_fwd_row(H, j0, j1, x.row(t * B + b), bias, gt + b * 4 * H, c + o1, c + o1 + B * H,
                       o + o1 + B * H);
        }
      });
  return {out, C, G};
}

template <class V>
std::vector<Tensor> lstm_backward_on(const Tensor& d_out_in, const Tensor& d_hT, const Tensor& d_cT, const Tensor& out,
                                  const Tensor& C, const Tensor& G, const Tensor& w_hh, bool has_bias,
                                  const c10::optional<Tensor>& ids, int64_t table_rows) {
  const Tensor d_out = d_out_in.contiguous(), w = w_hh.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = out.size(2);
  const TableGradient d_table(ids, table_rows, 4 * H, G);
  Tensor dG = at::empty({T, B, 4 * H}, G.options());
  Tensor dh = d_hT.contiguous().clone(), dc = d_cT.contiguous().clone();
  float *dg = dG.data_ptr<float>(), *dhp = dh.data_ptr<float>(), *dcp = dc.data_ptr<float>();
  const float *g = G.data_ptr<float>(), *c = C.data_ptr<float>(), *dout = d_out.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed(parts);
  run_team(
      parts, T + 1, 1,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_backward(packed[p], W, H, 0, 4 * H, j0, j1);
      },
      [&](int p, int64_t s, int) {
        const int64_t t = T - 1 - s;
        auto [j0, j1] = slice_of(p, parts, H);
        if (s > 0) packed[p].template multiply<false>(B, dg + (t + 1) * B * 4 * H, 4 * H, dhp, H);  // dh = dG[t + 1] W_hh
        if (s == T) return;
        for (int64_t b = 0; b < B; ++b) {  // the gate gradients of this part's units, and dc carried to t - 1
          const int64_t o1 = (t * B + b) * H;
          float* dgb = dg + (t * B + b) * 4 * H;
          lstm_bwd_row(H, j0, j1, dout + o1, dhp + b * H, dcp + b * H, g + (t * B + b) * 4 * H, c + o1,
                       c + o1 + B * H, dgb);
          if (d_table.wanted())
            for (int gate = 0; gate < 4; ++gate) d_table.add(t * B + b, gate * H, dgb + gate * H, j0, j1);
        }
      });
  Tensor dW = weight_gradient(dG, out, H, bf16_products<V>);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  return {d_table.or_rows(dG), dh, dc, dW, db};
}

// ---- plain RNN ------------------------------------------------------------------------------------

template <class V>
Tensor rnn_forward_on(const Tensor& gi, const Tensor& h0, const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
                      const c10::optional<Tensor>& ids) {
  const Tensor a = rows_of(b_hh.has_value() ? gi + *b_hh : gi, ids).contiguous(), w = w_hh.contiguous();
  const int64_t T = a.size(0), B = a.size(1), H = h0.size(1);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  float* o = out.data_ptr<float>();
  const float *ap = a.data_ptr<float>(), *W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed(parts);
  run_team(
      parts, T, 1,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_forward(packed[p], W, H, 0, j0, j1, 1);
      },
      [&](int p, int64_t t, int) {
        auto [j0, j1] = slice_of(p, parts, H);
        float* next = o + (t + 1) * B * H;
        packed[p].template multiply<false>(B, o + t * B * H, H, next, H);
        for (int64_t b = 0; b < B; ++b) rnn_fwd_row(j0, j1, ap + (t * B + b) * H, next + b * H);
      });
  return out;
}

template <class V>
std::vector<Tensor> rnn_backward_on(const Tensor& d_out_in, const Tensor& d_hT, const Tensor& out, const Tensor& w_hh,
                                 bool has_bias, const c10::optional<Tensor>& ids, int64_t table_rows) {
  const Tensor d_out = d_out_in.contiguous(), w = w_hh.contiguous();
  const int64_t T = out.size(0) - 1, B = out.size(1), H = out.size(2);
  const TableGradient d_table(ids, table_rows, H, out);
  Tensor dA = at::empty({T, B, H}, out.options()), dh = d_hT.contiguous().clone();
  float *da = dA.data_ptr<float>(), *dhp = dh.data_ptr<float>();
  const float *o = out.data_ptr<float>(), *dout = d_out.data_ptr<float>(), *W = w.data_ptr<float>();
  const int parts = team_size(H, kMinUnitsPerPart);
  std::vector<Packed<V>> packed(parts);
  run_team(
      parts, T + 1, 1,
      [&](int p) {
        auto [j0, j1] = slice_of(p, parts, H);
        pack_backward(packed[p], W, H, 0, H, j0, j1);
      },
      [&](int p, int64_t s, int) {
        const int64_t t = T - 1 - s;
        auto [j0, j1] = slice_of(p, parts, H);
        if (s > 0) packed[p].template multiply<false>(B, da + (t + 1) * B * H, H, dhp, H);  // dh = dA[t + 1] W_hh
        if (s == T) return;
        for (int64_t b = 0; b < B; ++b) {
          rnn_bwd_row(j0, j1, dout + (t * B + b) * H, dhp + b * H, o + ((t + 1) * B + b) * H, da + (t * B + b) * H);
          if (d_table.wanted()) d_table.add(t * B + b, 0, da + (t * B + b) * H, j0, j1);
        }
      });
  Tensor dW = weight_gradient(dA, out, H, bf16_products<V>);
  Tensor db = has_bias ? dA.sum({0, 1}) : Tensor();
  return {d_table.or_rows(dA), dh, dW, db};
}

// ---- the entry points: each recurrence at the width `isa` names ------------------------------------

namespace {

// f(V{}) for the vector traits V of `isa` (Avx512Bf16: the bfloat16 products of packed_gemm_bf16.h).
template <typename F>
decltype(auto) at_width(TeamIsa isa, const F& f) {
#if GRU_LM_HAVE_AVX512
  if (isa == TeamIsa::avx512) return f(Avx512{});
  if (isa == TeamIsa::avx512_bf16) return f(Avx512Bf16{});
#endif
  (void)isa;
  return f(Avx2{});
}

}  // namespace

std::vector<Tensor> gru_after_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                      const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids) {
  return at_width(isa, [&](auto v) { return gru_after_forward_on<decltype(v)>(gi, h0, w_hh, b_hh, ids); });
}

std::vector<Tensor> gru_after_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                       const Tensor& G, const Tensor& N, const Tensor& w_hh, bool has_bias,
                                       const c10::optional<Tensor>& ids, int64_t table_rows) {
  return at_width(isa, [&](auto v) {
    return gru_after_backward_on<decltype(v)>(d_out, d_hT, out, G, N, w_hh, has_bias, ids, table_rows);
  });
}

std::vector<Tensor> gru_before_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                                       const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids) {
  return at_width(isa, [&](auto v) { return gru_before_forward_on<decltype(v)>(gi, h0, w_hh, b_hh, ids); });
}

std::vector<Tensor> gru_before_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                        const Tensor& RZ, const Tensor& Q, const Tensor& N, const Tensor& w_hh,
                                        bool has_bias, const c10::optional<Tensor>& ids, int64_t table_rows) {
  return at_width(isa, [&](auto v) {
    return gru_before_backward_on<decltype(v)>(d_out, d_hT, out, RZ, Q, N, w_hh, has_bias, ids, table_rows);
  });
}

std::vector<Tensor> lstm_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& c0,
                                 const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
                                 const c10::optional<Tensor>& ids) {
  return at_width(isa, [&](auto v) { return lstm_forward_on<decltype(v)>(gi, h0, c0, w_hh, b_hh, ids); });
}

std::vector<Tensor> lstm_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& d_cT,
                                  const Tensor& out, const Tensor& C, const Tensor& G, const Tensor& w_hh,
                                  bool has_bias, const c10::optional<Tensor>& ids, int64_t table_rows) {
  return at_width(isa, [&](auto v) {
    return lstm_backward_on<decltype(v)>(d_out, d_hT, d_cT, out, C, G, w_hh, has_bias, ids, table_rows);
  });
}

Tensor rnn_forward(TeamIsa isa, const Tensor& gi, const Tensor& h0, const Tensor& w_hh,
                   const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& ids) {
  return at_width(isa, [&](auto v) { return rnn_forward_on<decltype(v)>(gi, h0, w_hh, b_hh, ids); });
}

std::vector<Tensor> rnn_backward(TeamIsa isa, const Tensor& d_out, const Tensor& d_hT, const Tensor& out,
                                 const Tensor& w_hh, bool has_bias, const c10::optional<Tensor>& ids,
                                 int64_t table_rows) {
  return at_width(isa, [&](auto v) {
    return rnn_backward_on<decltype(v)>(d_out, d_hT, out, w_hh, has_bias, ids, table_rows);
  });
}

}  // namespace gru_lm::team
#endif  // GRU_LM_HAVE_AVX2
