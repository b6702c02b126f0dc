// A team of threads that runs a recurrence step by step, with a barrier between the phases of a step.
//
// The work of a step is split into P parts ("virtual threads", one per thread of the team). Torch's
// parallel_for starts the team; each of its threads runs the parts it was given, phase by phase, and
// waits at a barrier after each phase until every part has finished that phase. If the runtime gives
// fewer threads than parts (a nested call, OMP_NUM_THREADS=1), a thread runs several parts one after
// the other and counts them all at the barrier, so the result is the same and nothing deadlocks.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <utility>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace gru_lm {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// A barrier for `parts` arrivals that can be reused step after step (sense reversal). A waiting thread
// spins (the others are a few microseconds away on a dedicated core) and yields after a while, so an
// oversubscribed machine still makes progress.
class Barrier {
 public:
  explicit Barrier(int parts) : parts_(parts) {}

  void arrive_and_wait(int count) {
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(count, std::memory_order_acq_rel) + count == parts_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 20000) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  const int parts_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// How many parts to split a recurrence of `units` units into: one per thread, each of at least
// `min_units` units (a part needs enough work to be worth a barrier).
inline int team_size(int64_t units, int64_t min_units) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units / min_units)));
}

// The slice [j0, j1) of n columns (a layer's units, the read-out's rows) that part p of `parts` owns:
// whole blocks of 8 (one AVX2 vector of floats, half an AVX-512 one), as evenly spread as the blocks
// allow. n is a multiple of 8 where this is used, so the slices cover all n.
inline std::pair<int64_t, int64_t> slice_of(int p, int parts, int64_t n) {
  const int64_t blocks = n / 8;
  return {8 * (blocks * p / parts), 8 * (blocks * (p + 1) / parts)};
}

// Run `steps` steps of `phases` phases each: phase(part, step, k) for every part, with a barrier after
// every phase. `setup(part)` runs once per part first (it packs that part's weights), then a barrier.
template <typename Setup, typename Phase>
void run_team(int parts, int64_t steps, int phases, const Setup& setup, const Phase& phase) {
  Barrier barrier(parts);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    const int count = static_cast<int>(end - begin);
    for (int64_t p = begin; p < end; ++p) setup(static_cast<int>(p));
    barrier.arrive_and_wait(count);
    for (int64_t s = 0; s < steps; ++s) {
      for (int k = 0; k < phases; ++k) {
        for (int64_t p = begin; p < end; ++p) phase(static_cast<int>(p), s, k);
        barrier.arrive_and_wait(count);
      }
    }
  });
}

}  // namespace gru_lm
