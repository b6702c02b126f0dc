// See products.h: which library multiplies a window's float32 matrices, and the call into each.
#include "products.h"

#include <ATen/Context.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

// The default: oneDNN where MKL would run narrower kernels than the processor has (AVX-512, not Intel).
bool onednn_by_default() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool yes = at::hasMKLDNN() && __builtin_cpu_supports("avx512f") && !intel_cpu();
  return yes;
#else
  return false;
#endif
}

bool onednn_now() {
  const char* forced = std::getenv("GRU_LM_PRODUCTS");
  if (forced && std::strcmp(forced, "mkl") == 0) return false;
  if (forced && std::strcmp(forced, "onednn") == 0) return at::hasMKLDNN();
  return onednn_by_default();
}

bool onednn_can_take(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return out.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
         out.is_contiguous() && out.numel() > 0 && a.size(1) > 0 && a.device().is_cpu() && onednn_now();
}

}  // namespace

const char* float_products() { return onednn_now() ? "onednn" : "mkl"; }

void mm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (onednn_can_take(out, a, b)) {
    at::native::mkldnn_matmul(a, b, out, accumulate ? 1.0f : 0.0f, 1.0f);
    return;
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
