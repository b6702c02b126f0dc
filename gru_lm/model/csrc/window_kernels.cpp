// Whole-window GRU, LSTM and RNN kernels: the equations of gru_lm/model/cells.py, with the time loop in
// C++, and the module's bindings.
//
// Each step is one matrix product (ATen's, multi-threaded BLAS) followed by one fused pass over the
// B×H gate values, which stays in cache. The backward is the hand-derived one of gru_lm/model/window.py
// (same buffers, same layout): the recurrent weight gradient is one large product over the window.
// Each entry point hands a float32 window to the team path (recurrent_team.cpp) where dispatch.h says
// so, and runs the BLAS path below otherwise. Built on first use by torch.utils.cpp_extension
// (gru_lm/model/kernels.py); gru_lm/model/window.py falls back to Python loops when no compiler is
// available.
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bias.h"
#include "input_rows.h"
#include "dispatch.h"
#include "dropout.h"
#include "elementwise.h"
#include "products.h"
#include "recurrent_team.h"
#include "sampler.h"

namespace gru_lm {

using at::Tensor;

namespace {

// ---- bfloat16 operands --------------------------------------------------------------------------------
//
// With bfloat16 operands (train --dtype bfloat16) the matrix products take bfloat16 operands (AMX or
// AVX-512 BF16 where the processor has them, float32 accumulation inside the BLAS), while the states,
// gates and every gradient stay float32, so the element-wise passes are the same code on both paths.
// The bfloat16 copy of a product's operand and the float32 values of its result are made row by row
// inside the element-wise passes (while the row is in cache, on the threads already running) instead
// of by separate whole-tensor copies, which cost a noticeable part of a step. On the exact path the
// bfloat16 buffers are undefined tensors, their data null, and the row helpers do nothing.
using BF16 = c10::BFloat16;

// A bfloat16 buffer's data, or null on the exact path (no buffer).
BF16* bf16_data(const Tensor& t) { return t.defined() ? t.data_ptr<BF16>() : nullptr; }

// With bfloat16 operands, the bfloat16 copy of `t`, else nothing: the copy of the initial state, which
// the first product reads before any element-wise pass has run.
Tensor bf16_copy(bool bfloat16_operands, const Tensor& t) {
  return bfloat16_operands ? t.to(at::kBFloat16) : Tensor();
}

// With bfloat16 operands, a B×width bfloat16 buffer for a product's operand, which the element-wise
// pass before the product fills row by row (narrow_row); else nothing.
Tensor bf16_buffer(bool bfloat16_operands, int64_t B, int64_t width, const Tensor& like) {
  return bfloat16_operands ? at::empty({B, width}, like.options().dtype(at::kBFloat16)) : Tensor();
}

// Row b (n values) of src, narrowed to bfloat16 into row b of dst; nothing where dst is null.
template <typename T>
void narrow_row(int64_t n, int64_t b, const T* src, BF16* dst) {
  if (!dst) return;
  src += b * n;
  dst += b * n;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) dst[i] = BF16(static_cast<float>(src[i]));
}

// Row b (n values) of the bfloat16 src, widened into row b of dst; nothing where src is null.
template <typename T>
void widen_row(int64_t n, int64_t b, const BF16* src, T* dst) {
  if (!src) return;
  src += b * n;
  dst += b * n;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(static_cast<float>(src[i]));
}

// Row b (n values) of c plus the bfloat16 m widened, into row b of dst.
template <typename T>
void add_widen_row(int64_t n, int64_t b, const T* c, const BF16* m, T* dst) {
  c += b * n;
  m += b * n;
  dst += b * n;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) dst[i] = c[i] + static_cast<T>(static_cast<float>(m[i]));
}

// ---- the BLAS path --------------------------------------------------------------------------------------

// Run f(b) for every batch row, split across the threads when the rows are big enough: the
// element-wise pass would otherwise leave one core idle between two multi-threaded products.
template <typename F>
void for_rows(int64_t B, int64_t H, const F& f) {
  at::parallel_for(0, B, std::max<int64_t>(1, 2048 / H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

// The dtype of the products' operands: bfloat16 with bfloat16 operands, else the tensors' own dtype
// (where mm_as changes nothing).
at::ScalarType operand_type(bool bfloat16_operands, const Tensor& like) {
  return bfloat16_operands ? at::kBFloat16 : like.scalar_type();
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

// Whether the recurrent weights are packed (GRU_LM_PACK unset, or anything but "0"). Read at every
// window, like GRU_LM_KERNELS (dispatch.h): the tests set it in the running process.
bool packing_enabled() {
  const char* v = std::getenv("GRU_LM_PACK");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// One recurrent weight W (N×K, as an nn.Linear weight: the product is a @ Wᵀ), made ready once for
// the T per-step products of a window. A plain mm repacks its weight operand into the BLAS's own
// layout on every call; at B = 32 that repacking is much of a step's cost. Here it is packed once:
// MKL's packed sgemm layout for float32 where float32 products go through MKL (the same arithmetic, bit
// for bit), oneDNN's blocked layout for bfloat16 operands (AMX where present). Where float32 products go
// through oneDNN (products.h: an AMD processor with AVX-512) a plain oneDNN matmul per step, whose
// AVX-512 kernels outrun MKL's packed AVX2 ones there. Where this torch has neither operator (or with
// GRU_LM_PACK=0), a plain mm with Wᵀ stored contiguously.
//
// MKL's packed buffer carries a sizeable overhead beyond the weight, whatever its size, and MKL keeps
// freed buffers for reuse: a window that packs two float32 weights per pass (the reset-before GRU)
// would peak well above torch.nn.GRU's memory (docs/performance.md). So float32 packing is asked for
// (mkl = true) only where a pass packs one weight; oneDNN's bfloat16 buffers are the weight's own size.
class RecurrentProduct {
 public:
  RecurrentProduct(const Tensor& w, int64_t batch, bool bfloat16_operands, bool mkl = true) : batch_(batch) {
    static const auto mkl_pack = cpu_op("mkl::_mkl_reorder_linear_weight");
    static const auto mkl_linear = cpu_op("mkl::_mkl_linear");
    static const auto dnn_pack = cpu_op("mkldnn::_reorder_linear_weight");
    static const auto dnn_linear = cpu_op("mkldnn::_linear_pointwise");
    const bool pack = packing_enabled();
    if (bfloat16_operands && pack && dnn_pack && dnn_linear) {
      try {  // oneDNN refuses bfloat16 on a processor without AVX-512 (or AVX-NE-CONVERT)
        w_ = call(*dnn_pack, {w.to(at::kBFloat16).contiguous(), c10::IValue(batch)});
        mode_ = DNN;
        op_ = &*dnn_linear;
        return;
      } catch (const c10::Error&) {
      }
    }
    if (!bfloat16_operands && mkl && pack && !float_products_through_onednn() && w.scalar_type() == at::kFloat &&
        mkl_pack && mkl_linear) {
      mode_ = MKL;
      op_ = &*mkl_linear;
      orig_ = w.contiguous();
      w_ = call(*mkl_pack, {orig_, c10::IValue(batch)});
      return;
    }
    mode_ = PLAIN;
    w_ = w.t().contiguous();  // h @ Wᵀ with Wᵀ contiguous: MKL runs that layout faster than a transposed operand
    if (bfloat16_operands) w_ = w_.to(at::kBFloat16);
  }

  // out = a @ Wᵀ, into the float32 (or float64) out.
  void into(Tensor out, const Tensor& a) const {
    if (mode_ == MKL) {
      out.copy_(call(*op_, {a, w_, orig_, c10::IValue(), c10::IValue(batch_)}));
    } else if (w_.scalar_type() == at::kBFloat16) {  // bfloat16 operands, packed or not
      out.copy_(product(a.to(at::kBFloat16)));
    } else {
      mm_into(out, a, w_);
    }
  }

  // a @ Wᵀ for bfloat16 a (bfloat16 operands only): the bfloat16 result, for the caller to widen.
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
      out.copy_(c);
      mm_into(out, a, w_, /*accumulate=*/true);
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

// A product a @ Wᵀ that an element-wise pass follows within the step. Exact path (a_bf16 undefined):
// written into `out`, nothing returned. With bfloat16 operands: computed from a_bf16, the copy of a
// that the pass before narrowed row by row, and returned in bfloat16 for the pass after it to widen
// into `out` row by row (widen_row).
Tensor step_product(const RecurrentProduct& w, const Tensor& out, const Tensor& a, const Tensor& a_bf16) {
  if (a_bf16.defined()) return w.product(a_bf16);
  w.into(out, a);
  return Tensor();
}

// The product that closes a step of the backward, carrying the state gradient back: dh = c + a @ Wᵀ,
// or dh = a @ Wᵀ where c is undefined. With bfloat16 operands it is computed from a_bf16 (narrowed by
// the pass before) and widened here row by row, since no pass of this step follows to do it.
template <typename T>
void state_gradient(const RecurrentProduct& w, const Tensor& dh, const Tensor& c, const Tensor& a,
                    const Tensor& a_bf16, int64_t B, int64_t H) {
  if (!a_bf16.defined()) {
    if (c.defined()) {
      w.add_into(dh, c, a);
    } else {
      w.into(dh, a);
    }
    return;
  }
  const Tensor m = w.product(a_bf16);
  const BF16* mp = m.data_ptr<BF16>();
  T* dhp = dh.data_ptr<T>();
  if (c.defined()) {
    const T* cp = c.data_ptr<T>();
    for_rows(B, H, [&](int64_t b) { add_widen_row(H, b, cp, mp, dhp); });
  } else {
    for_rows(B, H, [&](int64_t b) { widen_row(H, b, mp, dhp); });
  }
}

// a @ b with operands in `operand`'s dtype, returned in a's dtype (the window's weight gradients).
Tensor mm_as(const Tensor& a, const Tensor& b, at::ScalarType operand) {
  if (a.scalar_type() == operand) return gru_lm::mm(a, b);
  return a.to(operand).mm(b.to(operand)).to(a.scalar_type());
}

}  // namespace

// ---- the entry points ---------------------------------------------------------------------------------
//
// Arguments and results as gru_lm/model/window.py passes and reads them; bfloat16_operands is the last
// argument of each, but that ids follow it: with ids, the forward's gi is the V×G·H table the window's rows
// are looked up in (input_rows.h), and T×B comes from ids; the backward, given the same ids and the table's
// rows, returns the table's gradient where it returns d_gi.

// GRU, reset after the product: n = tanh(x_n + r ⊙ (h W_hnᵀ + b_hn)).
// Returns out (T+1)×B×H (out[0] = h0), G T×B×3H = [r, z, h W_hnᵀ + b_hn], N T×B×H = n.
std::vector<Tensor> gru_after_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                      bool bfloat16_operands, c10::optional<Tensor> ids) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(gi, h0.size(1), bfloat16_operands); isa != TeamIsa::none)
    return team::gru_after_forward(isa, gi, h0, w_hh, b_opt, ids);
#endif
  gi = rows_of(gi, ids).contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 3 * H, gi);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor G = at::empty({T, B, 3 * H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  const RecurrentProduct w(w_hh, B, bfloat16_operands);
  Tensor h_bf16 = bf16_copy(bfloat16_operands, out[0]);  // the state as the product's operand
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_after_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    BF16* hbp = bf16_data(h_bf16);
    for (int64_t t = 0; t < T; ++t) {
      Tensor g_t = G[t];
      const Tensor g_bf16 = step_product(w, g_t, out[t], h_bf16);
      const BF16* gl = bf16_data(g_bf16);
      scalar_t* g = g_t.data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      scalar_t* n = N[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        widen_row(3 * H, b, gl, g);
        gru_after_fwd_row(H, 0, H, x + b * 3 * H, bp, g + b * 3 * H, hp + b * H, n + b * H, hn + b * H);
        narrow_row(H, b, hn, hbp);
      });
    }
  });
  return {out, G, N};
}

// Returns d_gi T×B×3H, d_h0 B×H, d_w_hh 3H×H, d_b_hh 3H (undefined without bias).
// d_gi differs from dG only in its n part (da_n instead of d(h W_hnᵀ + b_hn) = da_n ⊙ r): that part is
// kept aside (T×B×H) and written over dG once the weight gradients are taken, so no second T×B×3H buffer.
std::vector<Tensor> gru_after_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor G, Tensor N, Tensor w_hh,
                                       bool has_bias, bool bfloat16_operands, c10::optional<Tensor> ids,
                                       int64_t table_rows) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(G, N.size(2), bfloat16_operands); isa != TeamIsa::none)
    return team::gru_after_backward(isa, d_out, d_hT, out, G, N, w_hh, has_bias, ids, table_rows);
#endif
  d_out = d_out.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = N.size(2);
  Tensor dG = at::empty({T, B, 3 * H}, G.options());  // [da_r, da_z, d(h W_hnᵀ + b_hn)]
  Tensor dAN = at::empty({T, B, H}, G.options());     // da_n
  Tensor dhz = at::empty({B, H}, G.options());
  Tensor dh = d_hT.contiguous().clone();
  const at::ScalarType operand = operand_type(bfloat16_operands, G);
  const RecurrentProduct w(w_hh.t(), B, bfloat16_operands);  // dh = dG W_hh = dG (W_hhᵀ)ᵀ
  Tensor dg_bf16 = bf16_buffer(bfloat16_operands, B, 3 * H, G);
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "gru_after_backward", [&] {
    BF16* dgl = bf16_data(dg_bf16);
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
        narrow_row(3 * H, b, dg, dgl);
      });
      state_gradient<scalar_t>(w, dh, dhz, dG[t], dg_bf16, B, H);  // dh = dh ⊙ z + dG W_hh
    }
  });
  Tensor dW = mm_as(dG.view({T * B, 3 * H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), operand);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  dG.narrow(2, 2 * H, H).copy_(dAN);  // now d_gi = [da_r, da_z, da_n]
  return {table_gradient_of(dG, ids, table_rows), dh, dW, db};
}

// GRU, reset before the product (Dive into Deep Learning's form): n = tanh(x_n + (r ⊙ h) W_hnᵀ + b_hn).
// Returns out (T+1)×B×H, RZ T×B×2H = [r, z], Q T×B×H = r ⊙ h, N T×B×H = n.
std::vector<Tensor> gru_before_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                       bool bfloat16_operands, c10::optional<Tensor> ids) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(gi, h0.size(1), bfloat16_operands); isa != TeamIsa::none)
    return team::gru_before_forward(isa, gi, h0, w_hh, b_opt, ids);
#endif
  gi = rows_of(gi, ids).contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 3 * H, gi);
  const RecurrentProduct w_rz(w_hh.narrow(0, 0, 2 * H), B, bfloat16_operands, /*mkl=*/false);
  const RecurrentProduct w_n(w_hh.narrow(0, 2 * H, H), B, bfloat16_operands, /*mkl=*/false);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  Tensor RZ = at::empty({T, B, 2 * H}, gi.options());
  Tensor Q = at::empty({T, B, H}, gi.options());
  Tensor N = at::empty({T, B, H}, gi.options());
  // with bfloat16 operands: the products' operands h and r ⊙ h as bfloat16 copies
  Tensor h_bf16 = bf16_copy(bfloat16_operands, out[0]);
  Tensor q_bf16 = bf16_buffer(bfloat16_operands, B, H, gi);
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_before_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    BF16* hbp = bf16_data(h_bf16);
    BF16* qbp = bf16_data(q_bf16);
    for (int64_t t = 0; t < T; ++t) {
      Tensor rz_t = RZ[t], n_t = N[t];
      const Tensor rz_bf16 = step_product(w_rz, rz_t, out[t], h_bf16);
      const BF16* rzl = bf16_data(rz_bf16);
      scalar_t* rz = rz_t.data_ptr<scalar_t>();
      scalar_t* q = Q[t].data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        widen_row(2 * H, b, rzl, rz);
        gru_before_gates_row(H, 0, H, x + b * 3 * H, bp, rz + b * 2 * H, hp + b * H, q + b * H);
        narrow_row(H, b, q, qbp);
      });
      const Tensor n_bf16 = step_product(w_n, n_t, Q[t], q_bf16);
      const BF16* nl = bf16_data(n_bf16);
      scalar_t* n = n_t.data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        widen_row(H, b, nl, n);
        gru_before_state_row(H, 0, H, x + b * 3 * H + 2 * H, bp + 2 * H, rz + b * 2 * H + H, n + b * H, hp + b * H,
                             hn + b * H);
        narrow_row(H, b, hn, hbp);
      });
    }
  });
  return {out, RZ, Q, N};
}

// Returns d_gi T×B×3H = [da_r, da_z, da_n], d_h0, d_w_hh, d_b_hh.
std::vector<Tensor> gru_before_backward(Tensor d_out, Tensor d_hT, Tensor out, Tensor RZ, Tensor Q, Tensor N,
                                        Tensor w_hh, bool has_bias, bool bfloat16_operands,
                                        c10::optional<Tensor> ids, int64_t table_rows) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(RZ, N.size(2), bfloat16_operands); isa != TeamIsa::none)
    return team::gru_before_backward(isa, d_out, d_hT, out, RZ, Q, N, w_hh, has_bias, ids, table_rows);
#endif
  d_out = d_out.contiguous();
  const int64_t T = RZ.size(0), B = RZ.size(1), H = N.size(2);
  const at::ScalarType operand = operand_type(bfloat16_operands, RZ);
  const RecurrentProduct w_rz(w_hh.narrow(0, 0, 2 * H).t(), B, bfloat16_operands, /*mkl=*/false);
  const RecurrentProduct w_n(w_hh.narrow(0, 2 * H, H).t(), B, bfloat16_operands, /*mkl=*/false);
  // the gradients of r and z (darz) and of the candidate (dan) are kept for the whole window, so that the
  // weight gradient multiplies them in place rather than column slices of dA (which oneDNN would copy)
  Tensor dA = at::empty({T, B, 3 * H}, RZ.options());
  Tensor dan_window = at::empty({T, B, H}, RZ.options());
  Tensor dq = at::empty({B, H}, RZ.options());
  Tensor dhz = at::empty({B, H}, RZ.options());
  Tensor darz_window = at::empty({T, B, 2 * H}, RZ.options());
  Tensor dh = d_hT.contiguous().clone();
  // with bfloat16 operands: bfloat16 copies of the two products' operands
  Tensor dan_bf16 = bf16_buffer(bfloat16_operands, B, H, RZ);
  Tensor darz_bf16 = bf16_buffer(bfloat16_operands, B, 2 * H, RZ);
  AT_DISPATCH_FLOATING_TYPES(RZ.scalar_type(), "gru_before_backward", [&] {
    BF16* danl = bf16_data(dan_bf16);
    BF16* darzl = bf16_data(darz_bf16);
    for (int64_t t = T - 1; t >= 0; --t) {
      const scalar_t* rz = RZ[t].data_ptr<scalar_t>();
      const scalar_t* n = N[t].data_ptr<scalar_t>();
      const scalar_t* hp = out[t].data_ptr<scalar_t>();
      const scalar_t* dout = d_out[t].data_ptr<scalar_t>();
      scalar_t* dhp = dh.data_ptr<scalar_t>();
      scalar_t* da = dA[t].data_ptr<scalar_t>();
      const Tensor dan = dan_window[t], darz = darz_window[t];
      scalar_t* dn = dan.data_ptr<scalar_t>();
      scalar_t* dz = dhz.data_ptr<scalar_t>();
      scalar_t* drz = darz.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o1 = b * H;
        gru_before_bwd_row1(H, 0, H, dout + o1, dhp + o1, rz + 2 * o1, n + o1, hp + o1, da + 3 * o1, dn + o1,
                            drz + 2 * o1, dz + o1);
        narrow_row(H, b, dn, danl);
      });
      const Tensor dq_bf16 = step_product(w_n, dq, dan, dan_bf16);  // dq = dL/d(r ⊙ h) = da_n W_hn
      const BF16* dql = bf16_data(dq_bf16);
      scalar_t* dqp = dq.data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        const int64_t o1 = b * H;
        widen_row(H, b, dql, dqp);
        gru_before_bwd_row2(H, 0, H, dqp + o1, rz + 2 * o1, hp + o1, da + 3 * o1, drz + 2 * o1, dz + o1);
        narrow_row(2 * H, b, drz, darzl);
      });
      state_gradient<scalar_t>(w_rz, dh, dhz, darz, darz_bf16, B, H);  // dh = dhz + [da_r, da_z] W_rz
    }
  });
  Tensor h_prev = out.narrow(0, 0, T).reshape({T * B, H});
  Tensor dW = at::cat({mm_as(darz_window.view({T * B, 2 * H}).t(), h_prev, operand),
                       mm_as(dan_window.view({T * B, H}).t(), Q.view({T * B, H}), operand)});
  Tensor db = has_bias ? dA.sum({0, 1}) : Tensor();
  return {table_gradient_of(dA, ids, table_rows), dh, dW, db};
}

// Plain RNN: h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh). Returns out (T+1)×B×H.
// With bfloat16 operands its products convert their operands whole (RecurrentProduct::into).
Tensor rnn_forward(Tensor gi, Tensor h0, Tensor w_hh, c10::optional<Tensor> b_opt, bool bfloat16_operands,
                   c10::optional<Tensor> ids) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(gi, h0.size(1), bfloat16_operands); isa != TeamIsa::none)
    return team::rnn_forward(isa, gi, h0, w_hh, b_opt, ids);
#endif
  Tensor a = rows_of(b_opt.has_value() ? gi + *b_opt : gi, ids).contiguous();
  const int64_t T = a.size(0), B = a.size(1), H = h0.size(1);
  Tensor out = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  const RecurrentProduct w(w_hh, B, bfloat16_operands);
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
                                 bool bfloat16_operands, c10::optional<Tensor> ids, int64_t table_rows) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(out, out.size(2), bfloat16_operands); isa != TeamIsa::none)
    return team::rnn_backward(isa, d_out, d_hT, out, w_hh, has_bias, ids, table_rows);
#endif
  d_out = d_out.contiguous();
  const int64_t T = out.size(0) - 1, B = out.size(1), H = out.size(2);
  Tensor dA = at::empty({T, B, H}, out.options());
  Tensor dh = d_hT.contiguous().clone();
  const at::ScalarType operand = operand_type(bfloat16_operands, out);
  const RecurrentProduct w(w_hh.t(), B, bfloat16_operands);
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
  return {table_gradient_of(dA, ids, table_rows), dh, dW, db};
}

// LSTM (gates i, f, g, o): returns out and C, (T+1)×B×H each (out[0] = h0, C[0] = c0), and G T×B×4H, the
// activated gates.
std::vector<Tensor> lstm_forward(Tensor gi, Tensor h0, Tensor c0, Tensor w_hh, c10::optional<Tensor> b_opt,
                                 bool bfloat16_operands, c10::optional<Tensor> ids) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(gi, h0.size(1), bfloat16_operands); isa != TeamIsa::none)
    return team::lstm_forward(isa, gi, h0, c0, w_hh, b_opt, ids);
#endif
  gi = rows_of(gi, ids).contiguous();
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1);
  Tensor bias = bias_or_zeros(b_opt, 4 * H, gi);
  Tensor out = at::empty({T + 1, B, H}, gi.options()), C = at::empty({T + 1, B, H}, gi.options());
  out[0].copy_(h0);
  C[0].copy_(c0);
  Tensor G = at::empty({T, B, 4 * H}, gi.options());
  const RecurrentProduct w(w_hh, B, bfloat16_operands);
  Tensor h_bf16 = bf16_copy(bfloat16_operands, out[0]);
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "lstm_forward", [&] {
    const scalar_t* bp = bias.data_ptr<scalar_t>();
    BF16* hbp = bf16_data(h_bf16);
    for (int64_t t = 0; t < T; ++t) {
      Tensor g_t = G[t];
      const Tensor g_bf16 = step_product(w, g_t, out[t], h_bf16);
      const BF16* gl = bf16_data(g_bf16);
      scalar_t* g = g_t.data_ptr<scalar_t>();
      const scalar_t* x = gi[t].data_ptr<scalar_t>();
      const scalar_t* cp = C[t].data_ptr<scalar_t>();
      scalar_t* cn = C[t + 1].data_ptr<scalar_t>();
      scalar_t* hn = out[t + 1].data_ptr<scalar_t>();
      for_rows(B, H, [&](int64_t b) {
        widen_row(4 * H, b, gl, g);
        lstm_fwd_row(H, 0, H, x + b * 4 * H, bp, g + b * 4 * H, cp + b * H, cn + b * H, hn + b * H);
        narrow_row(H, b, hn, hbp);
      });
    }
  });
  return {out, C, G};
}

// Returns d_gi T×B×4H, d_h0, d_c0, d_w_hh 4H×H, d_b_hh 4H (undefined without bias).
std::vector<Tensor> lstm_backward(Tensor d_out, Tensor d_hT, Tensor d_cT, Tensor out, Tensor C, Tensor G, Tensor w_hh,
                                  bool has_bias, bool bfloat16_operands, c10::optional<Tensor> ids,
                                  int64_t table_rows) {
#if GRU_LM_HAVE_AVX2
  if (const TeamIsa isa = team_isa(G, out.size(2), bfloat16_operands); isa != TeamIsa::none)
    return team::lstm_backward(isa, d_out, d_hT, d_cT, out, C, G, w_hh, has_bias, ids, table_rows);
#endif
  d_out = d_out.contiguous();
  const int64_t T = G.size(0), B = G.size(1), H = out.size(2);
  Tensor dG = at::empty({T, B, 4 * H}, G.options());
  Tensor dh = d_hT.contiguous().clone(), dc = d_cT.contiguous().clone();
  const at::ScalarType operand = operand_type(bfloat16_operands, G);
  const RecurrentProduct w(w_hh.t(), B, bfloat16_operands);  // dh = dG W_hh = dG (W_hhᵀ)ᵀ
  Tensor dg_bf16 = bf16_buffer(bfloat16_operands, B, 4 * H, G);
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "lstm_backward", [&] {
    BF16* dgl = bf16_data(dg_bf16);
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
        narrow_row(4 * H, b, dg, dgl);
      });
      state_gradient<scalar_t>(w, dh, Tensor(), dG[t], dg_bf16, B, H);  // dh = dG W_hh
    }
  });
  Tensor dW = mm_as(dG.view({T * B, 4 * H}).t(), out.narrow(0, 0, T).reshape({T * B, H}), operand);
  Tensor db = has_bias ? dG.sum({0, 1}) : Tensor();
  return {table_gradient_of(dG, ids, table_rows), dh, dc, dW, db};
}

}  // namespace gru_lm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("preferred_kernels", &gru_lm::preferred_kernels);
  m.def("preferred_bfloat16_kernels", &gru_lm::preferred_bfloat16_kernels);
  m.def("float_products", &gru_lm::float_products);
  m.def("mm_into", &gru_lm::mm_into, "out = a @ b (out += a @ b with accumulate), float32 through float_products()",
        pybind11::arg("out"), pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("accumulate") = false);
  gru_lm::bind_sampler(m);
  gru_lm::bind_dropout(m);
  m.def("gru_after_forward", &gru_lm::gru_after_forward);
  m.def("gru_after_backward", &gru_lm::gru_after_backward);
  m.def("gru_before_forward", &gru_lm::gru_before_forward);
  m.def("gru_before_backward", &gru_lm::gru_before_backward);
  m.def("lstm_forward", &gru_lm::lstm_forward);
  m.def("lstm_backward", &gru_lm::lstm_backward);
  m.def("rnn_forward", &gru_lm::rnn_forward);
  m.def("rnn_backward", &gru_lm::rnn_backward);
}
