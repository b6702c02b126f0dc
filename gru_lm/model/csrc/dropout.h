// Dropout masks from a counter-based hash (dropout.cpp).
#pragma once

#include <torch/extension.h>

namespace gru_lm {

// Binds dropout_mask(n, p, lo, hi) into the module.
void bind_dropout(pybind11::module& m);

}  // namespace gru_lm
