// Whole-window GRU and RNN kernels: the equations of gru_lm/cells.py, with the time loop in C++.
//
// Each step is one matrix product (ATen's, multi-threaded BLAS) followed by one fused pass over the
// B×H gate values, which stays in cache. The backward is the hand-derived one of gru_lm/fast.py
// (same buffers, same layout): the recurrent weight gradient is one large product over the window.
// Built on first use by torch.utils.cpp_extension; gru_lm/fast.py falls back to Python loops when
// no compiler is available.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

using at::Tensor;

namespace {

// exp for float without a library call or a branch, so that gcc vectorises the loops below
// (Cephes' expf: range reduction by ln 2 and a degree-6 polynomial; relative error ~1e-7).
inline float exp_f(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5·2²³ trick)
  x = x - k * 0.693359375f + k * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  return y * __builtin_bit_cast(float, bits);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline float tanh_(float x) { return 1.0f - 2.0f / (1.0f + exp_f(2.0f * x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// The element-wise passes, one row (one batch element) at a time: one pointer per gate and
// `ivdep` so that gcc vectorises them (the exp_f above keeps them free of calls).
template <typename T>
void gru_after_fwd_row(int64_t H, const T* x, const T* bias, T* g, const T* hp, T* n, T* hn) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    T r = sigmoid(x[j] + g[j] + bias[j]);
    T z = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
    T ghn = g[2 * H + j] + bias[2 * H + j];
    T c = tanh_(x[2 * H + j] + r * ghn);
    g[j] = r;
    g[H + j] = z;
    g[2 * H + j] = ghn;
    n[j] = c;
    hn[j] = c + z * (hp[j] - c);  // z ⊙ h + (1 − z) ⊙ n
  }
}

template <typename T>
void gru_after_bwd_row(int64_t H, const T* dout, const T* dhp, const T* g, const T* n, const T* hp, T* dg, T* dan_out,
                       T* dhz) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    T d = dout[j] + dhp[j];
    T r = g[j], z = g[H + j], ghn = g[2 * H + j], c = n[j];
    T dan = d * (1 - z) * (1 - c * c);
    T daz = d * (hp[j] - c) * z * (1 - z);
    T dar = dan * ghn * r * (1 - r);
    dg[j] = dar;
    dg[H + j] = daz;
    dg[2 * H + j] = dan * r;
    dan_out[j] = dan;
    dhz[j] = d * z;
  }
}

template <typename T>
void gru_before_gates_row(int64_t H, const T* x, const T* bias, T* rz, const T* hp, T* q) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    T r = sigmoid(x[j] + rz[j] + bias[j]);
    rz[j] = r;
    rz[H + j] = sigmoid(x[H + j] + rz[H + j] + bias[H + j]);
    q[j] = r * hp[j];
  }
}

template <typename T>
void gru_before_state_row(int64_t H, const T* xn, const T* bn, const T* z, T* n, const T* hp, T* hn) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    T c = tanh_(xn[j] + n[j] + bn[j]);
    n[j] = c;
    hn[j] = c + z[j] * (hp[j] - c);
  }
}

template <typename T>
void gru_before_bwd_row1(int64_t H, const T* dout, const T* dhp, const T* rz, const T* n, const T* hp, T* da, T* dan,
                         T* darz, T* dhz) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    T d = dout[j] + dhp[j];
    T z = rz[H + j], c = n[j];
    T a_n = d * (1 - z) * (1 - c * c);
    T a_z = d * (hp[j] - c) * z * (1 - z);
    dan[j] = a_n;
    da[2 * H + j] = a_n;
    da[H + j] = a_z;
    darz[H + j] = a_z;
    dhz[j] = d * z;
  }
}

template <typename T>
void gru_before_bwd_row2(int64_t H, const T* dq, const T* rz, const T* hp, T* da, T* darz, T* dhz) {
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    T r = rz[j];
    T a_r = dq[j] * hp[j] * r * (1 - r);
    da[j] = a_r;
    darz[j] = a_r;
    dhz[j] += dq[j] * r;
  }
}

template <typename T>
void rnn_fwd_row(int64_t n, const T* a, T* p) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) p[i] = tanh_(a[i] + p[i]);
}

template <typename T>
void rnn_bwd_row(int64_t n, const T* dout, const T* dhp, const T* h, T* da) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) da[i] = (dout[i] + dhp[i]) * (1 - h[i] * h[i]);
}

// The recurrent products run as h @ Wᵀ with Wᵀ stored contiguously: MKL runs that layout ~1.4× faster
// than the same product with a transposed operand (measured here for B = 32, H = 256 and 512); the
// bias is added in the element-wise pass instead of by addmm.
Tensor transposed(const Tensor& w) { return w.t().contiguous(); }

// Run f(b) for every batch row, split across the threads when the rows are big enough: the
// element-wise pass would otherwise leave one core idle between two multi-threaded products.
template <typename F>
void for_rows(int64_t B, int64_t H, const F& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, 2048 / H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

Tensor bias_or_zeros(const c10::optional<Tensor>& b, int64_t n, const Tensor& like) {
  return b.has_value() ? b->contiguous() : at::zeros({n}, like.options());
}

// Mixed precision (train --dtype bfloat16): the matrix products take bfloat16 operands (AMX or
// AVX-512 BF16 where the processor has them, float32 accumulation inside the BLAS), while the states,
// gates and every gradient stay float32, so the element-wise passes above are the same code. `low` is
// the operands' dtype: the tensors' own dtype on the exact path, where the helpers below change nothing.
at::ScalarType operand_type(bool low_precision, const Tensor& like) {
  return low_precision ? at::kBFloat16 : like.scalar_type();
}

Tensor as_type(const Tensor& t, at::ScalarType low) { return t.scalar_type() == low ? t : t.to(low); }

// out = a @ b into the float32 out, with b already in the operands' dtype.
void mm_into(Tensor out, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == b.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
    out.copy_(at::mm(a.to(b.scalar_type()), b));
  }
}

// out = c + a @ b, as above.
void addmm_into(Tensor out, const Tensor& c, const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == b.scalar_type()) {
    at::addmm_out(out, c, a, b);
  } else {
    out.copy_(at::mm(a.to(b.scalar_type()), b));
    out.add_(c);
  }
}

// a @ b with operands in `low`, returned in a's dtype (the window's weight gradients).
Tensor mm_as(const Tensor& a, const Tensor& b, at::ScalarType low) {
  if (a.scalar_type() == low) return a.mm(b);
  return a.to(low).mm(b.to(low)).to(a.scalar_type());
}

}  // namespace

// GRU, reset after the product: n = tanh(x_n + r ⊙ (h W_hnᵀ + b_hn)).
// Returns out (T+1)×B×H (out[0] = h0), G T×B×3H = [r, z, h W_hnᵀ + b_hn], N T×B×H = n.
std::vector<Tensor> gru_after_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                      bool low_precision) {
  gi = gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 3 * H, gi);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor G = at::empty({T, B, 3 * H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  Tensor wT = as_type(transposed(w_hh), operand_type(low_precision, gi));
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_after_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor g_t = G[t];
      mm_into(g_t, out[t], wT);
      scalar_t* g = g_t.data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      scalar_t* n = N[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        gru_after_fwd_row(H, x + b * 3 * H, bp, g + b * 3 * H, hp + b * H, n + b * H, hn + b * H);
      });
    }
  });
  return {out, G, N};
}

// Returns d_gi T×B×3H, d_h0 B×H, d_w_hh 3H×H, d_b_hh 3H (undefined without bias).
// d_gi differs from dG only in its n part (da_n instead of d(h W_hnᵀ + b_hn) = da_n ⊙ r): that part is
// kept aside (T×B×H) and written over dG once the weight gradients are taken, so no second T×B×3H buffer.
std::vector<Tensor> gru_after_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor G, Tensor N, Tensor w_hh,
                                       bool has_bias, bool low_precision) {
  d_out = d_out.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = N.size(2);
  Tensor dG = at::empty({T, B, 3 * H}, G.options());  // [da_r, da_z, d(h W_hnᵀ + b_hn)]
  Tensor dAN = at::empty({T, B, H}, G.options());     // da_n
  Tensor dhz = at::empty({B, H}, G.options());
  Tensor dh = d_hT.contiguous().clone();
  const at::ScalarType low = operand_type(low_precision, G);
  Tensor w = as_type(w_hh, low);
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "gru_after_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* g = G[t].data_ptr<scalar_t>();
      const scalar_t* n = N[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      const scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* dg = dG[t].data_ptr<scalar_t>();
      scalar_t* dan = dAN[t].data_ptr<scalar_t>();
      scalar_t* dz = dhz.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o3 = b * 3 * H, o1 = b * H;
        gru_after_bwd_row(H, dout + o1, dhp + o1, g + o3, n + o1, hp + o1, dg + o3, dan + o1, dz + o1);
      });
      addmm_into(dh, dhz, dG[t], w);
    }
  });
  Tensor dW = mm_as(dG.view({T * B, 3 * H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), low);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  dG.narrow(2, 2 * H, H).copy_(dAN);  // now d_gi = [da_r, da_z, da_n]
  return {dG, dh, dW, db};
}

// GRU, reset before the product (the lecture's form): n = tanh(x_n + (r ⊙ h) W_hnᵀ + b_hn).
// Returns out (T+1)×B×H, RZ T×B×2H = [r, z], Q T×B×H = r ⊙ h, N T×B×H = n.
std::vector<Tensor> gru_before_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                       bool low_precision) {
  gi = gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 3 * H, gi);
  const at::ScalarType low = operand_type(low_precision, gi);
  Tensor w_rzT = as_type(transposed(w_hh.narrow(0, 0, 2 * H)), low);
  Tensor w_nT = as_type(transposed(w_hh.narrow(0, 2 * H, H)), low);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor RZ = at::empty({T, B, 2 * H}, gi.options());
  Tensor Q = at::empty({T, B, H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_before_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor rz_t = RZ[t], n_t = N[t];
      mm_into(rz_t, out[t], w_rzT);
      scalar_t* rz = rz_t.data_ptr<scalar_t>();
      scalar_t* q = Q[t].data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        gru_before_gates_row(H, x + b * 3 * H, bp, rz + b * 2 * H, hp + b * H, q + b * H);
      });
      mm_into(n_t, Q[t], w_nT);
      scalar_t* n = n_t.data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        gru_before_state_row(H, x + b * 3 * H + 2 * H, bp + 2 * H, rz + b * 2 * H + H, n + b * H, hp + b * H,
                             hn + b * H);
      });
    }
  });
  return {out, RZ, Q, N};
}

// Returns d_gi T×B×3H = [da_r, da_z, da_n], d_h0, d_w_hh, d_b_hh.
std::vector<Tensor> gru_before_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor RZ, Tensor Q, Tensor N,
                                        Tensor w_hh, bool has_bias, bool low_precision) {
  d_out = d_out.contiguous();
  const int64_t T = RZ.size(0), B = RZ.size(1), H = N.size(2);
  const at::ScalarType low = operand_type(low_precision, RZ);
  Tensor w_rz = as_type(w_hh.narrow(0, 0, 2 * H), low), w_n = as_type(w_hh.narrow(0, 2 * H, H), low);
  Tensor dA = at::empty({T, B, 3 * H}, RZ.options());
  Tensor dan = at::empty({B, H}, RZ.options());
  Tensor dq = at::empty({B, H}, RZ.options());
  Tensor dhz = at::empty({B, H}, RZ.options());
  Tensor darz = at::empty({B, 2 * H}, RZ.options());
  Tensor dh = d_hT.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(RZ.scalar_type(), "gru_before_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* rz = RZ[t].data_ptr<scalar_t>();
      const scalar_t* n = N[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      const scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* da = dA[t].data_ptr<scalar_t>();
      scalar_t* dn = dan.data_ptr<scalar_t>();
      scalar_t* dz = dhz.data_ptr<scalar_t>();
      scalar_t* drz = darz.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o1 = b * H;
        gru_before_bwd_row1(H, dout + o1, dhp + o1, rz + 2 * o1, n + o1, hp + o1, da + 3 * o1, dn + o1, drz + 2 * o1,
                            dz + o1);
      });
      mm_into(dq, dan, w_n);  // dL/d(r ⊙ h)
      const scalar_t* dqp = dq.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o1 = b * H;
        gru_before_bwd_row2(H, dqp + o1, rz + 2 * o1, hp + o1, da + 3 * o1, drz + 2 * o1, dz + o1);
      });
      addmm_into(dh, dhz, darz, w_rz);
    }
  });
  Tensor h_prev = out.narrow(0, 0, T).reshape({T * B, H});
  Tensor flat = dA.view({T * B, 3 * H});
  Tensor dW = at::cat({mm_as(flat.narrow(1, 0, 2 * H).t(), h_prev, low),
                       mm_as(flat.narrow(1, 2 * H, H).t(), Q.view({T * B, H}), low)});
  Tensor db = has_bias ? dA.sum({0, 1}) : Tensor();
  return {dA, dh, dW, db};
}

// Plain RNN: h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh). Returns out (T+1)×B×H.
Tensor rnn_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt, bool low_precision) {
  Tensor a = b_opt.has_value() ? (gi + *b_opt).contiguous() : gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor wT = as_type(transposed(w_hh), operand_type(low_precision, gi));
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnn_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      Tensor o = out[t + 1];
      mm_into(o, out[t], wT);
      const scalar_t* ap = a[t].data_ptr<scalar_t>();
      scalar_t* op = o.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) { rnn_fwd_row(H, ap + b * H, op + b * H); });
    }
  });
  return out;
}

std::vector<Tensor> rnn_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor w_hh, bool has_bias,
                                 bool low_precision) {
  d_out = d_out.contiguous();
  const int64_t T = out.size(0) - 1, B = out.size(1), H = out.size(2);
  Tensor dA = at::empty({T, B, H}, out.options());
  Tensor dh = d_hT.contiguous().clone();
  const at::ScalarType low = operand_type(low_precision, out);
  Tensor w = as_type(w_hh, low);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* h = out[t + 1].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      const scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* da = dA[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) { rnn_bwd_row(H, dout + b * H, dhp + b * H, h + b * H, da + b * H); });
      mm_into(dh, dA[t], w);
    }
  });
  Tensor dW = mm_as(dA.view({T * B, H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), low);
  Tensor db = has_bias ? dA.sum({0, 1}) : Tensor();
  return {dA, dh, dW, db};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_after_forward", &gru_after_forward);
  m.def("gru_after_backward", &gru_after_backward);
  m.def("gru_before_forward", &gru_before_forward);
  m.def("gru_before_backward", &gru_before_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
}
