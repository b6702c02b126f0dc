// Whole-window GRU, LSTM and RNN kernels: the equations of gru_lm/cells.py, with the time loop in C++.
//
// Each step is one matrix product (ATen's, multi-threaded BLAS) followed by one fused pass over the
// B×H gate values, which stays in cache. The backward is the hand-derived one of gru_lm/window.py
// (same buffers, same layout): the recurrent weight gradient is one large product over the window.
// Built on first use by torch.utils.cpp_extension; gru_lm/window.py falls back to Python loops when
// no compiler is available.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include "dispatch.h"
#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

using at::Tensor;
using namespace gru_lm;

namespace {

// Mixed precision: the bfloat16 copies of a product's operand and the float32 values of its result,
// made row by row inside the element-wise passes (while the row is in cache, on the threads already
// running) instead of by separate whole-tensor copies, which cost a noticeable part of a step.
using BF16 = c10::BFloat16;

template <typename T>
void narrow_row(int64_t n, const T* src, BF16* dst) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) dst[i] = BF16(static_cast<float>(src[i]));
}

template <typename T>
void widen_row(int64_t n, const BF16* src, T* dst) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(static_cast<float>(src[i]));
}

template <typename T>
void add_widen_row(int64_t n, const T* c, const BF16* m, T* dst) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) dst[i] = c[i] + static_cast<T>(static_cast<float>(m[i]));
}

// A bfloat16 buffer's data, or nullptr on the exact path (no buffer).
BF16* bf16_ptr(const Tensor& t) { return t.defined() ? t.data_ptr<BF16>() : nullptr; }


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
// gates and every gradient stay float32, so the element-wise passes above are the same code. The result
// is the operands' dtype: the tensors' own dtype on the exact path, where mm_as changes nothing.
at::ScalarType operand_type(bool low_precision, const Tensor& like) {
  return low_precision ? at::kBFloat16 : like.scalar_type();
}

// A registered operator with a CPU kernel, or nothing where this build of torch lacks it.
c10::optional<c10::OperatorHandle> cpu_op(const char* name) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!op.has_value() || !op->hasKernelForDispatchKey(c10::DispatchKey::CPU)) return c10::nullopt;
  return op;
}

Tensor call(const c10::OperatorHandle& op, std::vector<c10::IValue> stack) {
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

bool packing_enabled() {
  const char* v = std::getenv("GRU_LM_PACK");
  return v == nullptr || std::string(v) != "0";
}

// One recurrent weight W (N×K, as an nn.Linear weight: the product is a @ Wᵀ), made ready once for
// the T per-step products of a window. A plain mm repacks its weight operand into the BLAS's own
// layout on every call; at B = 32 that repacking is much of a step's cost. Here it is packed once:
// MKL's packed sgemm layout for float32 (the same arithmetic, bit for bit), oneDNN's blocked layout
// for bfloat16 operands (AMX where present). Where this torch has neither operator (or with
// GRU_LM_PACK=0), a plain mm with Wᵀ stored contiguously.
//
// MKL's packed buffer carries several MB beyond the weight, whatever its size, and MKL keeps freed
// buffers for reuse: a window that packs two float32 weights per pass (the reset-before GRU) would
// peak well above torch.nn.GRU's memory (docs/performance.md). So float32 packing is asked for
// (mkl = true) only where a pass packs one weight; oneDNN's bfloat16 buffers are the weight's own size.
class RecurrentProduct {
 public:
  RecurrentProduct(const Tensor& w, int64_t batch, bool bf16, bool mkl = true) : batch_(batch) {
    static const auto mkl_pack = cpu_op("mkl::_mkl_reorder_linear_weight");
    static const auto mkl_linear = cpu_op("mkl::_mkl_linear");
    static const auto dnn_pack = cpu_op("mkldnn::_reorder_linear_weight");
    static const auto dnn_linear = cpu_op("mkldnn::_linear_pointwise");
    const bool pack = packing_enabled();
    if (bf16 && pack && dnn_pack && dnn_linear) {
      try {  // oneDNN refuses bfloat16 on a processor without AVX-512 (or AVX-NE-CONVERT)
        w_ = call(*dnn_pack, {w.to(at::kBFloat16).contiguous(), c10::IValue(batch)});
        mode_ = DNN;
        op_ = &*dnn_linear;
        return;
      } catch (const c10::Error&) {
      }
    }
    if (!bf16 && mkl && pack && w.scalar_type() == at::kFloat && mkl_pack && mkl_linear) {
      mode_ = MKL;
      op_ = &*mkl_linear;
      orig_ = w.contiguous();
      w_ = call(*mkl_pack, {orig_, c10::IValue(batch)});
      return;
    }
    mode_ = PLAIN;
    w_ = w.t().contiguous();  // h @ Wᵀ with Wᵀ contiguous: MKL runs that layout faster than a transposed operand
    if (bf16) w_ = w_.to(at::kBFloat16);
  }

  // out = a @ Wᵀ, into the float32 (or float64) out.
  void into(Tensor out, const Tensor& a) const {
    if (mode_ == MKL) {
      out.copy_(call(*op_, {a, w_, orig_, c10::IValue(), c10::IValue(batch_)}));
    } else if (w_.scalar_type() == at::kBFloat16) {  // mixed precision, packed or not
      out.copy_(product(a.to(at::kBFloat16)));
    } else {
      at::mm_out(out, a, w_);
    }
  }

  // a @ Wᵀ for bfloat16 a (mixed precision only): the bfloat16 result, for the caller to widen.
  Tensor product(const Tensor& a) const {
    if (mode_ == DNN) {
      return call(*op_, {a, w_, c10::IValue(), std::string("none"), c10::List<c10::optional<c10::Scalar>>(),
                         std::string("")});
    }
    return at::mm(a, w_);
  }

  // out = c + a @ Wᵀ.
  void add_into(Tensor out, const Tensor& c, const Tensor& a) const {
    if (mode_ == PLAIN && a.scalar_type() == w_.scalar_type()) {
      at::addmm_out(out, c, a, w_);
      return;
    }
    into(out, a);
    out.add_(c);
  }

 private:
  enum Mode { PLAIN, MKL, DNN } mode_ = PLAIN;
  const c10::OperatorHandle* op_ = nullptr;
  Tensor w_, orig_;
  int64_t batch_;
};

// a @ b with operands in `operand`'s dtype, returned in a's dtype (the window's weight gradients).
Tensor mm_as(const Tensor& a, const Tensor& b, at::ScalarType operand) {
  if (a.scalar_type() == operand) return a.mm(b);
  return a.to(operand).mm(b.to(operand)).to(a.scalar_type());
}

}  // namespace

// GRU, reset after the product: n = tanh(x_n + r ⊙ (h W_hnᵀ + b_hn)).
// Returns out (T+1)×B×H (out[0] = h0), G T×B×3H = [r, z, h W_hnᵀ + b_hn], N T×B×H = n.
std::vector<Tensor> gru_after_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                      bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(gi, h0.size(1), low_precision)) return gru_after_forward_avx2(gi, h0, w_hh, b_opt);
#endif
  gi = gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 3 * H, gi);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor G = at::empty({T, B, 3 * H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  const RecurrentProduct w(w_hh, B, low_precision);
  Tensor hb = low_precision ? out[0].to(at::kBFloat16) : Tensor();  // the state as the product's operand
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_after_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor g_t = G[t], g_low;
      if (low_precision) {
        g_low = w.product(hb);
      } else {
        w.into(g_t, out[t]);
      }
      const BF16* gl = bf16_ptr(g_low);
      BF16* hbp = bf16_ptr(hb);
      scalar_t* g = g_t.data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      scalar_t* n = N[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        if (gl) widen_row(3 * H, gl + b * 3 * H, g + b * 3 * H);
        gru_after_fwd_row(H, 0, H, x + b * 3 * H, bp, g + b * 3 * H, hp + b * H, n + b * H, hn + b * H);
        if (hbp) narrow_row(H, hn + b * H, hbp + b * H);
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
#if GRU_LM_HAVE_AVX2
  if (use_avx2(G, N.size(2), low_precision)) return gru_after_backward_avx2(d_out, d_hT, out, G, N, w_hh, has_bias);
#endif
  d_out = d_out.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = N.size(2);
  Tensor dG = at::empty({T, B, 3 * H}, G.options());  // [da_r, da_z, d(h W_hnᵀ + b_hn)]
  Tensor dAN = at::empty({T, B, H}, G.options());     // da_n
  Tensor dhz = at::empty({B, H}, G.options());
  Tensor dh = d_hT.contiguous().clone();
  const at::ScalarType operand = operand_type(low_precision, G);
  const RecurrentProduct w(w_hh.t(), B, low_precision);  // dh = dG W_hh = dG (W_hhᵀ)ᵀ
  Tensor dgb = low_precision ? at::empty({B, 3 * H}, G.options().dtype(at::kBFloat16)) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "gru_after_backward", [&] {
    BF16* dgl = bf16_ptr(dgb);
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* g = G[t].data_ptr<scalar_t>();
      const scalar_t* n = N[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* dg = dG[t].data_ptr<scalar_t>();
      scalar_t* dan = dAN[t].data_ptr<scalar_t>();
      scalar_t* dz = dhz.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o3 = b * 3 * H, o1 = b * H;
        gru_after_bwd_row(H, 0, H, dout + o1, dhp + o1, g + o3, n + o1, hp + o1, dg + o3, dan + o1, dz + o1);
        if (dgl) narrow_row(3 * H, dg + o3, dgl + o3);
      });
      if (low_precision) {
        Tensor m = w.product(dgb);
        const BF16* mp = m.data_ptr<BF16>();
        for_rows(B, H, [&](int64_t b) { add_widen_row(H, dz + b * H, mp + b * H, dhp + b * H); });
      } else {
        w.add_into(dh, dhz, dG[t]);
      }
    }
  });
  Tensor dW = mm_as(dG.view({T * B, 3 * H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), operand);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  dG.narrow(2, 2 * H, H).copy_(dAN);  // now d_gi = [da_r, da_z, da_n]
  return {dG, dh, dW, db};
}

// GRU, reset before the product (Dive into Deep Learning's form): n = tanh(x_n + (r ⊙ h) W_hnᵀ + b_hn).
// Returns out (T+1)×B×H, RZ T×B×2H = [r, z], Q T×B×H = r ⊙ h, N T×B×H = n.
std::vector<Tensor> gru_before_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                       bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(gi, h0.size(1), low_precision)) return gru_before_forward_avx2(gi, h0, w_hh, b_opt);
#endif
  gi = gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 3 * H, gi);
  const RecurrentProduct w_rz(w_hh.narrow(0, 0, 2 * H), B, low_precision, /*mkl=*/false);
  const RecurrentProduct w_n(w_hh.narrow(0, 2 * H, H), B, low_precision, /*mkl=*/false);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor RZ = at::empty({T, B, 2 * H}, gi.options());
  Tensor Q = at::empty({T, B, H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  // mixed precision: the products' operands h and r ⊙ h as bfloat16 copies
  Tensor hb = low_precision ? out[0].to(at::kBFloat16) : Tensor();
  Tensor qb = low_precision ? at::empty({B, H}, hb.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_before_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    BF16* hbp = bf16_ptr(hb);
    BF16* qbp = bf16_ptr(qb);
    for (int64_t t = 0; t < T; ++t) {
      Tensor rz_t = RZ[t], n_t = N[t], rz_low, n_low;
      if (low_precision) {
        rz_low = w_rz.product(hb);
      } else {
        w_rz.into(rz_t, out[t]);
      }
      const BF16* rzl = bf16_ptr(rz_low);
      scalar_t* rz = rz_t.data_ptr<scalar_t>();
      scalar_t* q = Q[t].data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        if (rzl) widen_row(2 * H, rzl + b * 2 * H, rz + b * 2 * H);
        gru_before_gates_row(H, 0, H, x + b * 3 * H, bp, rz + b * 2 * H, hp + b * H, q + b * H);
        if (qbp) narrow_row(H, q + b * H, qbp + b * H);
      });
      if (low_precision) {
        n_low = w_n.product(qb);
      } else {
        w_n.into(n_t, Q[t]);
      }
      const BF16* nl = bf16_ptr(n_low);
      scalar_t* n = n_t.data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        if (nl) widen_row(H, nl + b * H, n + b * H);
        gru_before_state_row(H, 0, H, x + b * 3 * H + 2 * H, bp + 2 * H, rz + b * 2 * H + H, n + b * H, hp + b * H,
                             hn + b * H);
        if (hbp) narrow_row(H, hn + b * H, hbp + b * H);
      });
    }
  });
  return {out, RZ, Q, N};
}

// Returns d_gi T×B×3H = [da_r, da_z, da_n], d_h0, d_w_hh, d_b_hh.
std::vector<Tensor> gru_before_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor RZ, Tensor Q, Tensor N,
                                        Tensor w_hh, bool has_bias, bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(RZ, N.size(2), low_precision)) return gru_before_backward_avx2(d_out, d_hT, out, RZ, Q, N, w_hh, has_bias);
#endif
  d_out = d_out.contiguous();
  const int64_t T = RZ.size(0), B = RZ.size(1), H = N.size(2);
  const at::ScalarType operand = operand_type(low_precision, RZ);
  const RecurrentProduct w_rz(w_hh.narrow(0, 0, 2 * H).t(), B, low_precision, /*mkl=*/false);
  const RecurrentProduct w_n(w_hh.narrow(0, 2 * H, H).t(), B, low_precision, /*mkl=*/false);
  Tensor dA = at::empty({T, B, 3 * H}, RZ.options());
  Tensor dan = at::empty({B, H}, RZ.options());
  Tensor dq = at::empty({B, H}, RZ.options());
  Tensor dhz = at::empty({B, H}, RZ.options());
  Tensor darz = at::empty({B, 2 * H}, RZ.options());
  Tensor dh = d_hT.contiguous().clone();
  // mixed precision: bfloat16 copies of the two products' operands
  const auto bf = RZ.options().dtype(at::kBFloat16);
  Tensor danb = low_precision ? at::empty({B, H}, bf) : Tensor();
  Tensor darzb = low_precision ? at::empty({B, 2 * H}, bf) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(RZ.scalar_type(), "gru_before_backward", [&] {
    BF16* danl = bf16_ptr(danb);
    BF16* darzl = bf16_ptr(darzb);
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* rz = RZ[t].data_ptr<scalar_t>();
      const scalar_t* n = N[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* da = dA[t].data_ptr<scalar_t>();
      scalar_t* dn = dan.data_ptr<scalar_t>();
      scalar_t* dz = dhz.data_ptr<scalar_t>();
      scalar_t* drz = darz.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o1 = b * H;
        gru_before_bwd_row1(H, 0, H, dout + o1, dhp + o1, rz + 2 * o1, n + o1, hp + o1, da + 3 * o1, dn + o1, drz + 2 * o1,
                            dz + o1);
        if (danl) narrow_row(H, dn + o1, danl + o1);
      });
      Tensor dq_low;
      if (low_precision) {
        dq_low = w_n.product(danb);
      } else {
        w_n.into(dq, dan);  // dL/d(r ⊙ h)
      }
      const BF16* dql = bf16_ptr(dq_low);
      scalar_t* dqp = dq.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o1 = b * H;
        if (dql) widen_row(H, dql + o1, dqp + o1);
        gru_before_bwd_row2(H, 0, H, dqp + o1, rz + 2 * o1, hp + o1, da + 3 * o1, drz + 2 * o1, dz + o1);
        if (darzl) narrow_row(2 * H, drz + 2 * o1, darzl + 2 * o1);
      });
      if (low_precision) {
        Tensor m = w_rz.product(darzb);
        const BF16* mp = m.data_ptr<BF16>();
        for_rows(B, H, [&](int64_t b) { add_widen_row(H, dz + b * H, mp + b * H, dhp + b * H); });
      } else {
        w_rz.add_into(dh, dhz, darz);
      }
    }
  });
  Tensor h_prev = out.narrow(0, 0, T).reshape({T * B, H});
  Tensor flat = dA.view({T * B, 3 * H});
  Tensor dW = at::cat({mm_as(flat.narrow(1, 0, 2 * H).t(), h_prev, operand),
                       mm_as(flat.narrow(1, 2 * H, H).t(), Q.view({T * B, H}), operand)});
  Tensor db = has_bias ? dA.sum({0, 1}) : Tensor();
  return {dA, dh, dW, db};
}

// Plain RNN: h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh). Returns out (T+1)×B×H.
Tensor rnn_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt, bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(gi, h0.size(1), low_precision)) return rnn_forward_avx2(gi, h0, w_hh, b_opt);
#endif
  Tensor a = b_opt.has_value() ? (gi + *b_opt).contiguous() : gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  const RecurrentProduct w(w_hh, B, low_precision);
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "rnn_forward", [&] {
    for (int64_t t = 0; t < T; ++t) {
      Tensor o = out[t + 1];
      w.into(o, out[t]);
      const scalar_t* ap = a[t].data_ptr<scalar_t>();
      scalar_t* op = o.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) { rnn_fwd_row(0, H, ap + b * H, op + b * H); });
    }
  });
  return out;
}

std::vector<Tensor> rnn_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor w_hh, bool has_bias,
                                 bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(out, out.size(2), low_precision)) return rnn_backward_avx2(d_out, d_hT, out, w_hh, has_bias);
#endif
  d_out = d_out.contiguous();
  const int64_t T = out.size(0) - 1, B = out.size(1), H = out.size(2);
  Tensor dA = at::empty({T, B, H}, out.options());
  Tensor dh = d_hT.contiguous().clone();
  const at::ScalarType operand = operand_type(low_precision, out);
  const RecurrentProduct w(w_hh.t(), B, low_precision);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_backward", [&] {
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* h = out[t + 1].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      const scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* da = dA[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) { rnn_bwd_row(0, H, dout + b * H, dhp + b * H, h + b * H, da + b * H); });
      w.into(dh, dA[t]);
    }
  });
  Tensor dW = mm_as(dA.view({T * B, H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), operand);
  Tensor db = has_bias ? dA.sum({0, 1}) : Tensor();
  return {dA, dh, dW, db};
}

// LSTM (gates i, f, g, o): returns out and C, (T+1)×B×H each (out[0] = h0, C[0] = c0), and G T×B×4H, the
// activated gates.
std::vector<Tensor> lstm_forward(Tensor gi, Tensor h0, Tensor c0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                 bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(gi, h0.size(1), low_precision)) return lstm_forward_avx2(gi, h0, c0, w_hh, b_opt);
#endif
  gi = gi.contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 4 * H, gi);
  Tensor out = at::empty({T + 1, B, H}, gi.options()), C = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  C[0].copy_(c0);
  Tensor G = at::empty({T, B, 4 * H}, gi.options());
  const RecurrentProduct w(w_hh, B, low_precision);
  Tensor hb = low_precision ? out[0].to(at::kBFloat16) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "lstm_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    for (int64_t t = 0; t < T; ++t) {
      Tensor g_t = G[t], g_low;
      if (low_precision) {
        g_low = w.product(hb);
      } else {
        w.into(g_t, out[t]);
      }
      const BF16* gl = bf16_ptr(g_low);
      BF16* hbp = bf16_ptr(hb);
      scalar_t* g = g_t.data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* cp = C[t].data_ptr<scalar_t>();
      scalar_t* cn = C[t + 1].data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        if (gl) widen_row(4 * H, gl + b * 4 * H, g + b * 4 * H);
        lstm_fwd_row(H, 0, H, x + b * 4 * H, bp, g + b * 4 * H, cp + b * H, cn + b * H, hn + b * H);
        if (hbp) narrow_row(H, hn + b * H, hbp + b * H);
      });
    }
  });
  return {out, C, G};
}

// Returns d_gi T×B×4H, d_h0, d_c0, d_w_hh 4H×H, d_b_hh 4H (undefined without bias).
std::vector<Tensor> lstm_backward(Tensor d_out, Tensor d_hT, Tensor d_cT, Tensor out, Tensor C, Tensor G, Tensor w_hh,
                                  bool has_bias, bool low_precision) {
#if GRU_LM_HAVE_AVX2
  if (use_avx2(G, out.size(2), low_precision))
    return lstm_backward_avx2(d_out, d_hT, d_cT, out, C, G, w_hh, has_bias);
#endif
  d_out = d_out.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = out.size(2);
  Tensor dG = at::empty({T, B, 4 * H}, G.options());
  Tensor dh = d_hT.contiguous().clone(), dc = d_cT.contiguous().clone();
  const at::ScalarType operand = operand_type(low_precision, G);
  const RecurrentProduct w(w_hh.t(), B, low_precision);  // dh = dG W_hh = dG (W_hhᵀ)ᵀ
  Tensor dgb = low_precision ? at::empty({B, 4 * H}, G.options().dtype(at::kBFloat16)) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "lstm_backward", [&] {
    BF16* dgl = bf16_ptr(dgb);
    scalar_t* dcp = dc.data_ptr<scalar_t>();
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* g = G[t].data_ptr<scalar_t>();
      const scalar_t* cp = C[t].data_ptr<scalar_t>();
      const scalar_t* cn = C[t + 1].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      const scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* dg = dG[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        lstm_bwd_row(H, 0, H, dout + b * H, dhp + b * H, dcp + b * H, g + b * 4 * H, cp + b * H, cn + b * H,
                     dg + b * 4 * H);
        if (dgl) narrow_row(4 * H, dg + b * 4 * H, dgl + b * 4 * H);
      });
      if (low_precision) {
        Tensor m = w.product(dgb);
        scalar_t* dh_out = dh.data_ptr<scalar_t>();
        const BF16* mp = m.data_ptr<BF16>();
        for_rows(B, H, [&](int64_t b) { widen_row(H, mp + b * H, dh_out + b * H); });
      } else {
        w.into(dh, dG[t]);
      }
    }
  });
  Tensor dW = mm_as(dG.view({T * B, 4 * H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), operand);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  return {dG, dh, dc, dW, db};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("preferred_kernels", &preferred_kernels);
  bind_sampler(m);
  bind_dropout(m);
  m.def("gru_after_forward", &gru_after_forward);
  m.def("gru_after_backward", &gru_after_backward);
  m.def("gru_before_forward", &gru_before_forward);
  m.def("gru_before_backward", &gru_before_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_backward", &rnn_backward);
}
