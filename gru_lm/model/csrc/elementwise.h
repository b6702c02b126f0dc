// The element-wise arithmetic of the cells (gru_lm/model/cells.py), one batch row at a time, shared by the
// BLAS path (window_kernels.cpp) and the team path (recurrent_team.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace gru_lm {

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

// The element-wise passes, one row (one batch element) at a time, over the units [j0, j1) of the row
// (a thread of the team works on its own units; the BLAS path passes the whole row, 0 to H): one
// pointer per gate and `ivdep` so that gcc vectorises them (the exp_f above keeps them free of calls).
// Pointers are to the start of the row; H is the distance between the gates of a unit.
template <typename T>
void gru_after_fwd_row(int64_t H, int64_t j0, int64_t j1, const T* x, const T* bias, T* g, const T* hp, T* n, T* hn) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
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
void gru_after_bwd_row(int64_t H, int64_t j0, int64_t j1, const T* dout, const T* dhp, const T* g, const T* n,
                       const T* hp, T* dg, T* dan_out, T* dhz) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
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
void gru_before_gates_row(int64_t H, int64_t j0, int64_t j1, const T* x, const T* bias, T* rz, const T* hp, T* q) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
    T r = sigmoid(x[j] + rz[j] + bias[j]);
    rz[j] = r;
    rz[H + j] = sigmoid(x[H + j] + rz[H + j] + bias[H + j]);
    q[j] = r * hp[j];
  }
}

template <typename T>
void gru_before_state_row(int64_t /*H*/, int64_t j0, int64_t j1, const T* xn, const T* bn, const T* z, T* n,
                          const T* hp, T* hn) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
    T c = tanh_(xn[j] + n[j] + bn[j]);
    n[j] = c;
    hn[j] = c + z[j] * (hp[j] - c);
  }
}

// da is the position's row of d_gi ([da_r, da_z, da_n]), or null where nobody reads it (a window that read a
// table needs only darz and dan): each pass copies the gradients it computed into it.
template <typename T>
void gru_before_bwd_row1(int64_t H, int64_t j0, int64_t j1, const T* dout, const T* dhp, const T* rz, const T* n,
                         const T* hp, T* da, T* dan, T* darz, T* dhz) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
    T d = dout[j] + dhp[j];
    T z = rz[H + j], c = n[j];
    dan[j] = d * (1 - z) * (1 - c * c);
    darz[H + j] = d * (hp[j] - c) * z * (1 - z);
    dhz[j] = d * z;
  }
  if (da == nullptr) return;
  std::copy(darz + H + j0, darz + H + j1, da + H + j0);
  std::copy(dan + j0, dan + j1, da + 2 * H + j0);
}

template <typename T>
void gru_before_bwd_row2(int64_t /*H*/, int64_t j0, int64_t j1, const T* dq, const T* rz, const T* hp, T* da, T* darz,
                         T* dhz) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
    T r = rz[j];
    darz[j] = dq[j] * hp[j] * r * (1 - r);
    dhz[j] += dq[j] * r;
  }
  if (da != nullptr) std::copy(darz + j0, darz + j1, da + j0);
}

// LSTM: g holds the product h W_hhᵀ of the four gates on entry and the activated gates [i, f, g, o] on exit.
template <typename T>
void lstm_fwd_row(int64_t H, int64_t j0, int64_t j1, const T* x, const T* bias, T* g, const T* cp, T* cn, T* hn) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
    T i = sigmoid(x[j] + g[j] + bias[j]);
    T f = sigmoid(x[H + j] + g[H + j] + bias[H + j]);
    T cand = tanh_(x[2 * H + j] + g[2 * H + j] + bias[2 * H + j]);
    T o = sigmoid(x[3 * H + j] + g[3 * H + j] + bias[3 * H + j]);
    g[j] = i;
    g[H + j] = f;
    g[2 * H + j] = cand;
    g[3 * H + j] = o;
    T c = f * cp[j] + i * cand;
    cn[j] = c;
    hn[j] = o * tanh_(c);
  }
}

// LSTM backward of one step: dc carries dL/dc in and dL/dc_prev out; dg gets the pre-activation gradients.
template <typename T>
void lstm_bwd_row(int64_t H, int64_t j0, int64_t j1, const T* dout, const T* dhp, T* dc, const T* g, const T* cp,
                  const T* cn, T* dg) {
#pragma GCC ivdep
  for (int64_t j = j0; j < j1; ++j) {
    T i = g[j], f = g[H + j], cand = g[2 * H + j], o = g[3 * H + j];
    T tc = tanh_(cn[j]);
    T dh = dout[j] + dhp[j];
    T dct = dc[j] + dh * o * (1 - tc * tc);
    dg[j] = dct * cand * i * (1 - i);
    dg[H + j] = dct * cp[j] * f * (1 - f);
    dg[2 * H + j] = dct * i * (1 - cand * cand);
    dg[3 * H + j] = dh * tc * o * (1 - o);
    dc[j] = dct * f;
  }
}

template <typename T>
void rnn_fwd_row(int64_t j0, int64_t j1, const T* a, T* p) {
#pragma GCC ivdep
  for (int64_t i = j0; i < j1; ++i) p[i] = tanh_(a[i] + p[i]);
}

template <typename T>
void rnn_bwd_row(int64_t j0, int64_t j1, const T* dout, const T* dhp, const T* h, T* da) {
#pragma GCC ivdep
  for (int64_t i = j0; i < j1; ++i) da[i] = (dout[i] + dhp[i]) * (1 - h[i] * h[i]);
}

}  // namespace gru_lm
