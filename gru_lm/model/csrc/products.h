// The float32 matrix products of a window that are not on the step-by-step path (the recurrent weight
// gradient, the input projections, the read-out) and the BLAS path's per-step product: through MKL
// (at::mm) or through oneDNN's matmul primitive, both of which ship inside PyTorch.
//
// Why two libraries: MKL runs its AVX2 kernels on processors that are not Intel's, so on an AMD processor
// with AVX-512 (Zen 4, Zen 5) a float32 product through MKL gets half the vector width that oneDNN's JIT
// kernels use there. On Intel processors MKL runs AVX-512 (or AMX) itself and stays the choice; so does
// every processor without AVX-512 BW/VL/DQ, where PyTorch's oneDNN matmul refuses float32. GRU_LM_PRODUCTS=mkl
// or =onednn overrides the choice where that library can run, read at every call (as GRU_LM_KERNELS is), so
// that a benchmark can compare the two in one run. Both are float32 products with float32 sums; they differ
// only in the order of the additions.
#pragma once

#include <torch/extension.h>

namespace gru_lm {

// Whether a float32 product takes oneDNN here now (else MKL).
bool float_products_through_onednn();

// "onednn" or "mkl": the same, as a name for Python and the benchmarks' headers.
const char* float_products();

// out = a @ b, or out += a @ b with accumulate; float32 through float_products(), other dtypes through
// at::mm. out is a's rows × b's columns and must not overlap a or b. a and b may be any strided views:
// oneDNN reads a contiguous matrix or its transpose in place and copies any other view (a column slice)
// before the product, which for a product as thin as a window's weight gradient costs about as much as
// the product itself; the kernels hand it whole matrices there.
void mm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate = false);

// a @ b as a new tensor, through mm_into.
at::Tensor mm(const at::Tensor& a, const at::Tensor& b);

}  // namespace gru_lm
