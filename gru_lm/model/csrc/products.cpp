// See products.h: which library multiplies a window's float32 matrices, and the call into each.
#include "products.h"

#include <ATen/Context.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace at::native {
// PyTorch's own entry to oneDNN's matmul (aten/src/ATen/native/mkldnn/Matmul.cpp, exported by
// libtorch_cpu but not in its installed headers): result = beta · result + alpha · mat1 @ mat2, for
// strided 2-D float32 or bfloat16 operands, with oneDNN's primitive cache keeping the compiled kernel.
void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta,
                   float alpha);
}  // namespace at::native

namespace gru_lm {
namespace {

// Whether the processor reports itself as Intel's (CPUID leaf 0's vendor string), read once.
bool intel_cpu() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    char vendor[13];
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    vendor[12] = '\0';
    return std::strcmp(vendor, "GenuineIntel") == 0;
  }();
  return yes;
#else
  return false;
#endif
}

// Whether PyTorch's oneDNN matmul takes float32 here: it needs AVX-512 F, BW, VL and DQ (it refuses
// other processors), and oneDNN not switched off (torch.backends.mkldnn.enabled = False).
bool onednn_runs_here() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool cpu = at::hasMKLDNN() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq");
  return cpu && at::globalContext().userEnabledMkldnn();
#else
  return false;
#endif
}

// Set when oneDNN refused a float32 product although this processor has what it needs (ONEDNN_MAX_CPU_ISA
// set below AVX-512, say): it fails before it writes, MKL computes that product and every later one.
std::atomic<bool> onednn_refused{false};

// oneDNN where it runs and MKL would run narrower kernels than the processor has (not Intel), unless
// GRU_LM_PRODUCTS asks for one; a forced oneDNN where it cannot run is MKL.
bool onednn_now() {
  const char* forced = std::getenv("GRU_LM_PRODUCTS");
  if (forced && std::strcmp(forced, "mkl") == 0) return false;
  if (!onednn_runs_here() || onednn_refused.load(std::memory_order_relaxed)) return false;
  return (forced && std::strcmp(forced, "onednn") == 0) || !intel_cpu();
}

bool onednn_can_take(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
         out.is_contiguous() && out.numel() > 0 && a.size(1) > 0 && a.device().is_cpu() && b.device().is_cpu() &&
         onednn_now();
}

}  // namespace

bool float_products_through_onednn() { return onednn_now(); }

const char* float_products() { return onednn_now() ? "onednn" : "mkl"; }

void mm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2 && a.size(1) == b.size(0) &&
                  out.size(0) == a.size(0) && out.size(1) == b.size(1),
              "mm_into: out ", out.sizes(), " cannot hold a ", a.sizes(), " @ b ", b.sizes());
  if (onednn_can_take(out, a, b)) {
    try {
      at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
      return;
    } catch (const c10::Error&) {
      onednn_refused.store(true, std::memory_order_relaxed);
    }
  }
  at::Tensor into = out;
  if (accumulate) {
    into.addmm_(a, b);
  } else {
    at::mm_out(into, a, b);
  }
}

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  mm_into(out, a, b);
  return out;
}

}  // namespace gru_lm
