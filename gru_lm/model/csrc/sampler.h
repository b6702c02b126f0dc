// Generation without a Python step per character (sampler.cpp).
#pragma once

#include <torch/extension.h>

namespace gru_lm {

// Binds the Sampler class into the module where the AVX2 kernels exist; binds nothing elsewhere (the
// Python sampler then does the work).
void bind_sampler(pybind11::module& m);

}  // namespace gru_lm
