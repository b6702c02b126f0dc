// Generating text one character at a time, for N streams together, without a Python step per character.
//
// A character costs a few matrix-vector products (one stream) or small matrix products (N streams):
// each layer's recurrent (and, above the first, input) product, the read-out, then a draw. In Python
// each of those is a framework call whose overhead dwarfs its arithmetic; here a team of threads
// (team.h) runs a whole chunk of characters, each thread owning a slice of every layer's units and of
// the vocabulary, with its slices of the weights packed once (packed_gemm.h) and read from its own
// cache at every character, at the vector width dispatch.h picks for the windows (AVX-512 or AVX2). The first layer's input product is a table: embed(c) W_ihᵀ + b_ih for
// every character c of the vocabulary, made by the caller.
#include "sampler.h"

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "elementwise.h"

#if GRU_LM_HAVE_AVX2
#include "packed_gemm.h"
#include "team.h"

namespace gru_lm {
namespace {

enum class Cell { GruAfter, GruBefore, Lstm, Rnn };

Cell cell_of(const std::string& name) {
  if (name == "gru_after") return Cell::GruAfter;
  if (name == "gru_before") return Cell::GruBefore;
  if (name == "lstm") return Cell::Lstm;
  TORCH_CHECK(name == "rnn", "unknown cell ", name);
  return Cell::Rnn;
}

int gates_of(Cell c) { return c == Cell::Lstm ? 4 : c == Cell::Rnn ? 1 : 3; }

// The next character of one stream from its logits: argmax at temperature 0, else a draw with the
// uniform number u from the softmax of logits / temperature, kept to the top_k most likely and then
// to the smallest set whose probability reaches top_p (the rule of pick in gru_lm/generation/sample.py:
// a character is dropped when the ones more likely than it already reach top_p).
int64_t draw(const float* logits, int64_t V, double temperature, int64_t top_k, double top_p, double u,
             std::vector<double>& p, std::vector<int64_t>& order) {
  const float* best = std::max_element(logits, logits + V);
  if (temperature == 0) return best - logits;
  for (int64_t v = 0; v < V; ++v) p[v] = (static_cast<double>(logits[v]) - *best) / temperature;
  if (top_k > 0 && top_k < V) {
    std::vector<double> sorted(p.begin(), p.begin() + V);
    std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[top_k - 1];
    for (int64_t v = 0; v < V; ++v)
      if (p[v] < kth) p[v] = -INFINITY;
  }
  for (int64_t v = 0; v < V; ++v) p[v] = std::exp(p[v]);
  if (top_p < 1.0) {
    std::iota(order.begin(), order.begin() + V, 0);
    std::stable_sort(order.begin(), order.begin() + V, [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    const double total = std::accumulate(p.begin(), p.begin() + V, 0.0);
    double before = 0;
    for (int64_t r = 0; r < V; ++r) {
      const double here = p[order[r]];
      if (before / total >= top_p) p[order[r]] = 0;
      before += here;
    }
  }
  double cdf = 0;
  for (int64_t v = 0; v < V; ++v) cdf += p[v];
  const double target = u * cdf;
  double run = 0;
  for (int64_t v = 0; v < V; ++v) {
    run += p[v];
    if (run >= target && p[v] > 0) return v;
  }
  return V - 1;
}

}  // namespace

// What a sampler does, whatever the vector width its products run at.
class SamplerBase {
 public:
  virtual ~SamplerBase() = default;
  virtual at::Tensor run_each(at::Tensor last, at::Tensor state, at::Tensor uniforms,
                              const std::vector<double>& temperature, const std::vector<int64_t>& top_k,
                              const std::vector<double>& top_p) = 0;
  virtual at::Tensor logits(at::Tensor last, at::Tensor state) = 0;
  virtual int parts() const = 0;
};

// The weights of a trained model for stepping, and the states of N streams, with products at the width of V.
template <class V>
class SamplerAt final : public SamplerBase {
 public:
  SamplerAt(const std::string& cell, at::Tensor table, std::vector<at::Tensor> w_ih, std::vector<at::Tensor> w_hh,
          std::vector<at::Tensor> b_ih, std::vector<at::Tensor> b_hh, at::Tensor head_w, at::Tensor head_b)
      : cell_(cell_of(cell)), table_(table.contiguous()), head_w_(head_w.contiguous()), head_b_(head_b.contiguous()) {
    H_ = w_hh[0].size(1);
    V_ = head_w_.size(0);
    L_ = static_cast<int64_t>(w_hh.size());
    for (int64_t l = 0; l < L_; ++l) {
      w_ih_.push_back(w_ih[l].contiguous());
      w_hh_.push_back(w_hh[l].contiguous());
      b_ih_.push_back(b_ih[l].contiguous());
      b_hh_.push_back(b_hh[l].contiguous());
    }
    parts_ = team_size(H_, 64);
    pack();
  }

  // Sampler::run with each stream's own temperature, top_k and top_p (N of each): the streams of different
  // requests advance in one batch. A stream's characters depend only on its own row (every product
  // computes each row with the same kernel and order whatever the other rows), so they are the same
  // in a batch of any size and make-up as alone.
  //
  // A character is the layers' phases, the read-out's, then the draw, with a barrier after each. With
  // one stream and a team, a split draw would leave every part but one idle, so instead every part draws
  // the stream (the same logits and uniform number give the same character) into its own copy of the
  // streams' characters, at the start of the next character's first phase: one barrier fewer a character.
  // (With a few streams over many parts each part would draw them all, which costs more than the barrier.)
  at::Tensor run_each(at::Tensor last, at::Tensor state, at::Tensor uniforms, const std::vector<double>& temperature,
                      const std::vector<int64_t>& top_k, const std::vector<double>& top_p) override {
    TORCH_CHECK(state.is_contiguous() && state.scalar_type() == at::kFloat, "the state must be contiguous float32");
    last = last.contiguous();
    uniforms = uniforms.contiguous();
    const int64_t N = last.size(0), chars = uniforms.size(0);
    TORCH_CHECK(static_cast<int64_t>(temperature.size()) == N && static_cast<int64_t>(top_k.size()) == N &&
                    static_cast<int64_t>(top_p.size()) == N,
                "one temperature, top_k and top_p per stream");
    at::Tensor ids = at::empty({chars, N}, last.options());
    begin(N, state);
    const bool each_draws = N == 1 && parts_ > 1;
    std::vector<std::vector<int64_t>> cur(each_draws ? parts_ : 1,
                                          std::vector<int64_t>(last.data_ptr<int64_t>(), last.data_ptr<int64_t>() + N));
    const double* u = uniforms.data_ptr<double>();
    int64_t* out = ids.data_ptr<int64_t>();
    // part p draws streams [s0, s1) of character t from the logits (only part 0 writes them out when all draw)
    auto draw_streams = [&](int p, int64_t t, int64_t s0, int64_t s1) {
      auto& mine = cur[each_draws ? p : 0];
      for (int64_t s = s0; s < s1; ++s) {
        mine[s] = draw(logits_.data() + s * Vp_, V_, temperature[s], top_k[s], top_p[s], u[t * N + s], scratch_p_[p],
                       scratch_order_[p]);
        if (!each_draws || p == 0) out[t * N + s] = mine[s];
      }
    };
    const int layers = layer_phases(), phases = layers + (each_draws ? 1 : 2);
    run_team(parts_, chars, phases, [](int) {}, [&](int p, int64_t t, int k) {
      const bool flip = t % 2 == 1;
      if (each_draws && k == 0 && t > 0) draw_streams(p, t - 1, 0, N);
      if (k < layers) {
        layer_phase(p, k, cur[each_draws ? p : 0], flip);
      } else if (k == layers) {
        head_phase(p, flip);
      } else {
        auto [s0, s1] = streams_of(p, N);
        draw_streams(p, t, s0, s1);
      }
    });
    if (each_draws && chars > 0) draw_streams(0, chars - 1, 0, N);
    end(N, state, chars % 2 == 1);
    return ids;
  }

  int parts() const override { return parts_; }

  // The logits after reading `last` from `state` (N streams), without drawing: what the tests compare
  // with the model's forward. The state is updated as by one character of run().
  at::Tensor logits(at::Tensor last, at::Tensor state) override {
    TORCH_CHECK(state.is_contiguous() && state.scalar_type() == at::kFloat, "the state must be contiguous float32");
    last = last.contiguous();
    const int64_t N = last.size(0);
    begin(N, state);
    std::vector<int64_t> cur(last.data_ptr<int64_t>(), last.data_ptr<int64_t>() + N);
    const int layers = layer_phases();
    run_team(parts_, 1, layers + 1, [](int) {}, [&](int p, int64_t, int k) {
      if (k < layers) layer_phase(p, k, cur, false);
      else head_phase(p, false);
    });
    end(N, state, true);
    at::Tensor out = at::empty({N, V_}, head_w_.options());
    for (int64_t s = 0; s < N; ++s) std::copy_n(logits_.data() + s * Vp_, V_, out.data_ptr<float>() + s * V_);
    return out;
  }

 private:
  // The phases of a character's layers (the reset-before GRU has two per layer).
  int layer_phases() const { return static_cast<int>(L_) * (cell_ == Cell::GruBefore ? 2 : 1); }

  std::pair<int64_t, int64_t> streams_of(int p, int64_t N) const { return {N * p / parts_, N * (p + 1) / parts_}; }

  // Each part packs its columns of every product: its units' gates of W_hh (and of W_ih above the first
  // layer; the reset-before GRU's candidate apart), and its slice of the read-out's rows (padded to 8).
  void pack() {
    const int G = gates_of(cell_);
    Vp_ = (V_ + 7) / 8 * 8;
    packed_.clear();
    packed_.resize(parts_);
    at::parallel_for(0, parts_, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        auto [j0, j1] = slice_of(static_cast<int>(p), parts_, H_);
        auto& mine = packed_[p];
        mine.resize(3 * L_ + 1);
        for (int64_t l = 0; l < L_; ++l) {
          const float* Whh = w_hh_[l].data_ptr<float>();
          const int rec_gates = cell_ == Cell::GruBefore ? 2 : G;
          mine[3 * l].pack(H_, runs(j0, j1, 0, rec_gates), [&](int64_t k, int64_t n) { return Whh[n * H_ + k]; });
          if (cell_ == Cell::GruBefore)
            mine[3 * l + 1].pack(H_, runs(j0, j1, 0, 1),
                                 [&](int64_t k, int64_t n) { return Whh[(2 * H_ + n) * H_ + k]; });
          if (l > 0) {
            const float* Wih = w_ih_[l].data_ptr<float>();
            mine[3 * l + 2].pack(H_, runs(j0, j1, 0, G), [&](int64_t k, int64_t n) { return Wih[n * H_ + k]; });
          }
        }
        auto [v0, v1] = slice_of(static_cast<int>(p), parts_, Vp_);
        const float* Wo = head_w_.data_ptr<float>();
        if (v1 > v0)
          mine[3 * L_].pack(H_, {{v0, v1 - v0}}, [&](int64_t k, int64_t n) { return n < V_ ? Wo[n * H_ + k] : 0.0f; });
      }
    });
  }

  // Part p's columns of `gates` gates, the gates H apart (each run lands in the same columns of C).
  std::vector<std::pair<int64_t, int64_t>> runs(int64_t j0, int64_t j1, int64_t first_col, int gates) const {
    std::vector<std::pair<int64_t, int64_t>> r;
    for (int g = 0; g < gates; ++g) r.emplace_back(first_col + g * H_ + j0, j1 - j0);
    return r;
  }

  // Copy the streams' state in (h and, for the LSTM, c of every layer) and size the buffers.
  void begin(int64_t N, const at::Tensor& state) {
    const int G = gates_of(cell_);
    N_ = N;
    h_[0].assign(L_ * N * H_, 0);
    h_[1].assign(L_ * N * H_, 0);
    c_[0].assign(cell_ == Cell::Lstm ? L_ * N * H_ : 0, 0);
    c_[1].assign(c_[0].size(), 0);
    gate_.assign(N * G * H_, 0);
    gi_.assign(N * G * H_, 0);
    cand_.assign(N * H_, 0);
    q_.assign(N * H_, 0);
    logits_.assign(N * Vp_, 0);
    scratch_p_.assign(parts_, std::vector<double>(V_));
    scratch_order_.assign(parts_, std::vector<int64_t>(V_));
    const at::Tensor st = state.contiguous();
    const float* sp = st.data_ptr<float>();
    const int64_t W = st.size(2);
    for (int64_t l = 0; l < L_; ++l)
      for (int64_t s = 0; s < N; ++s) {
        std::copy_n(sp + (l * N + s) * W, H_, h_[0].data() + (l * N + s) * H_);
        if (cell_ == Cell::Lstm) std::copy_n(sp + (l * N + s) * W + H_, H_, c_[0].data() + (l * N + s) * H_);
      }
  }

  // Copy the streams' state out: from the second buffer after an odd number of characters (`flipped`).
  void end(int64_t N, at::Tensor& state, bool flipped) {
    const int cur = flipped ? 1 : 0;
    float* sp = state.data_ptr<float>();
    const int64_t W = state.size(2);
    for (int64_t l = 0; l < L_; ++l)
      for (int64_t s = 0; s < N; ++s) {
        std::copy_n(h_[cur].data() + (l * N + s) * H_, H_, sp + (l * N + s) * W);
        if (cell_ == Cell::Lstm) std::copy_n(c_[cur].data() + (l * N + s) * H_, H_, sp + (l * N + s) * W + H_);
      }
  }

  // Layer phase k (the reset-before GRU has two per layer): part p's units of layer l, all streams. The
  // state before the character is in the second of the two buffers when `flip` (odd characters), else the first.
  void layer_phase(int p, int k, const std::vector<int64_t>& cur, bool flip) {
    const bool two = cell_ == Cell::GruBefore;
    const int64_t l = two ? k / 2 : k;
    const int sub = two ? k % 2 : 0;
    const int G = gates_of(cell_);
    auto [j0, j1] = slice_of(p, parts_, H_);
    const int in = flip ? 1 : 0, out = 1 - in;
    const float* hp = h_[in].data() + l * N_ * H_;   // this layer's state before the character
    float* hn = h_[out].data() + l * N_ * H_;        // and after it
    const float* below = l > 0 ? h_[out].data() + (l - 1) * N_ * H_ : nullptr;  // the new state of the layer below
    const float* bias = b_hh_[l].data_ptr<float>();
    auto& mine = packed_[p];
    if (sub == 0) {
      input_projection(p, l, j0, j1, G, below, cur);
      mine[3 * l].template multiply<false>(N_, hp, H_, gate_.data(), (two ? 2 : G) * H_);
    }
    for (int64_t s = 0; s < N_; ++s) {
      const float* x = gi_.data() + s * G * H_;
      float* g = gate_.data() + s * (two ? 2 : G) * H_;
      const int64_t o = s * H_;
      switch (cell_) {
        case Cell::GruAfter: gru_after_fwd_row(H_, j0, j1, x, bias, g, hp + o, cand_.data() + o, hn + o); break;
        case Cell::Lstm: {
          const float* cp = c_[in].data() + l * N_ * H_ + o;
          float* cn = c_[out].data() + l * N_ * H_ + o;
          lstm_fwd_row(H_, j0, j1, x, bias, g, cp, cn, hn + o);
          break;
        }
        case Cell::Rnn: rnn_fwd_row(j0, j1, x, g); std::copy(g + j0, g + j1, hn + o + j0); break;
        case Cell::GruBefore:
          if (sub == 0) gru_before_gates_row(H_, j0, j1, x, bias, g, hp + o, q_.data() + o);
          break;
      }
    }
    if (two && sub == 1) {  // the candidate from q = r ⊙ h of all units, then the new state
      mine[3 * l + 1].template multiply<false>(N_, q_.data(), H_, cand_.data(), H_);
      for (int64_t s = 0; s < N_; ++s)
        gru_before_state_row(H_, j0, j1, gi_.data() + s * G * H_ + 2 * H_, bias + 2 * H_,
                             gate_.data() + s * 2 * H_ + H_, cand_.data() + s * H_, hp + s * H_, hn + s * H_);
    }
  }

  // gi for part p's units: the table's row for the first layer, x W_ihᵀ + b_ih above it (RNN: + b_hh too,
  // since its element-wise pass takes one sum).
  void input_projection(int p, int64_t l, int64_t j0, int64_t j1, int G, const float* below,
                        const std::vector<int64_t>& cur) {
    const float* b_ih = b_ih_[l].data_ptr<float>();
    const float* b_hh = b_hh_[l].data_ptr<float>();
    const float* table = table_.data_ptr<float>();
    const bool rnn = cell_ == Cell::Rnn;
    if (l > 0) packed_[p][3 * l + 2].template multiply<false>(N_, below, H_, gi_.data(), G * H_);
    for (int64_t s = 0; s < N_; ++s) {
      float* x = gi_.data() + s * G * H_;
      const float* row = table + cur[s] * G * H_;
      for (int g = 0; g < G; ++g) {
        const int64_t a = g * H_ + j0, b = g * H_ + j1;
        if (l == 0) std::copy(row + a, row + b, x + a);
        else for (int64_t j = a; j < b; ++j) x[j] += b_ih[j];
        if (rnn) for (int64_t j = a; j < b; ++j) x[j] += b_hh[j];
      }
    }
  }

  void head_phase(int p, bool flip) {
    const int out = flip ? 0 : 1;
    auto [v0, v1] = slice_of(p, parts_, Vp_);
    if (v1 <= v0) return;
    const float* top = h_[out].data() + (L_ - 1) * N_ * H_;
    packed_[p][3 * L_].template multiply<false>(N_, top, H_, logits_.data(), Vp_);
    const float* b = head_b_.data_ptr<float>();
    for (int64_t s = 0; s < N_; ++s)
      for (int64_t v = v0; v < std::min(v1, V_); ++v) logits_[s * Vp_ + v] += b[v];
  }

  Cell cell_;
  at::Tensor table_, head_w_, head_b_;
  std::vector<at::Tensor> w_ih_, w_hh_, b_ih_, b_hh_;
  int64_t H_ = 0, V_ = 0, Vp_ = 0, L_ = 0, N_ = 0;
  int parts_ = 1;
  std::vector<std::vector<PackedColumns<V>>> packed_;
  std::vector<float> h_[2], c_[2], gate_, gi_, cand_, q_, logits_;
  std::vector<std::vector<double>> scratch_p_;
  std::vector<std::vector<int64_t>> scratch_order_;
};

// The sampler Python sees: one of SamplerAt's widths, chosen when it is made.
class Sampler {
 public:
  Sampler(const std::string& cell, at::Tensor table, std::vector<at::Tensor> w_ih, std::vector<at::Tensor> w_hh,
          std::vector<at::Tensor> b_ih, std::vector<at::Tensor> b_hh, at::Tensor head_w, at::Tensor head_b) {
#if GRU_LM_HAVE_AVX512
    if (preferred_isa() == TeamIsa::avx512) {
      impl_ = std::make_unique<SamplerAt<Avx512>>(cell, table, w_ih, w_hh, b_ih, b_hh, head_w, head_b);
      return;
    }
#endif
    impl_ = std::make_unique<SamplerAt<Avx2>>(cell, table, w_ih, w_hh, b_ih, b_hh, head_w, head_b);
  }

  // Generate `chars` characters for every stream from `last` (the last character read, N ids) and the
  // streams' state (L×N×W, W = H or 2H for the LSTM's (h, c)); returns chars×N ids and updates state.
  at::Tensor run(at::Tensor last, at::Tensor state, at::Tensor uniforms, double temperature, int64_t top_k,
                 double top_p) {
    const int64_t N = last.size(0);
    return run_each(last, state, uniforms, std::vector<double>(N, temperature), std::vector<int64_t>(N, top_k),
                    std::vector<double>(N, top_p));
  }

  // run() with each stream's own temperature, top_k and top_p (N of each).
  at::Tensor run_each(at::Tensor last, at::Tensor state, at::Tensor uniforms, const std::vector<double>& temperature,
                      const std::vector<int64_t>& top_k, const std::vector<double>& top_p) {
    return impl_->run_each(last, state, uniforms, temperature, top_k, top_p);
  }

  // The logits after reading `last` from `state`, without drawing (the state is updated).
  at::Tensor logits(at::Tensor last, at::Tensor state) { return impl_->logits(last, state); }

  // How many parts (threads of the team) share each character's work.
  int parts() const { return impl_->parts(); }

 private:
  std::unique_ptr<SamplerBase> impl_;
};

void bind_sampler(pybind11::module& m) {
  pybind11::class_<Sampler>(m, "Sampler")
      .def(pybind11::init<const std::string&, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                          std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>())
      .def("run", &Sampler::run)
      .def("run_each", &Sampler::run_each)
      .def("logits", &Sampler::logits)
      .def("parts", &Sampler::parts);
}

}  // namespace gru_lm
#else
namespace gru_lm {
void bind_sampler(pybind11::module&) {}
}  // namespace gru_lm
#endif  // GRU_LM_HAVE_AVX2
