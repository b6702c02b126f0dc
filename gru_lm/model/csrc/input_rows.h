// The input projections a window reads, in one of two forms (gru_lm/model/window.py passes either):
//   - gi alone: T×B×width, one row per position;
//   - gi and ids: gi is a table of width-wide rows (V×width: the first layer's projection of every
//     character, cells.py's input_table) and ids (T×B, int64) says which row each position reads.
// The team path reads the table in place (row i = t·B + b of the window is row ids[i] of the table), so
// the window never materialises its T·B rows; the BLAS path and the RNN, which adds its bias to every
// row anyway, look the rows up once with rows_of. A window that read a table returns the table's gradient
// (V×width) in place of its rows' (T×B×width): the team path sums it as it goes (TableGradient), the BLAS
// path from its rows' gradient (table_gradient_of).
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace gru_lm {

// ids made contiguous, checked to be T×B int64 rows of a `rows`-row table.
inline at::Tensor checked_ids(const at::Tensor& ids, int64_t rows) {
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong, "ids must be a T×B int64 tensor, got ",
              ids.sizes(), " ", ids.scalar_type());
  at::Tensor c = ids.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0, n = c.numel(); i < n; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < rows, "id ", p[i], " is not a row of the ", rows, "-row input table");
  return c;
}

// The window's rows as one T×B×width tensor: gi itself, or the table's rows that ids pick.
inline at::Tensor rows_of(const at::Tensor& gi, const c10::optional<at::Tensor>& ids) {
  if (!ids.has_value()) return gi;
  TORCH_CHECK(gi.dim() == 2, "with ids, gi must be the V×width input table, got ", gi.sizes());
  const at::Tensor c = checked_ids(*ids, gi.size(0));
  return gi.index_select(0, c.view(-1)).view({c.size(0), c.size(1), gi.size(1)});
}

// Row i of the window, read in place from gi or from the table (float32: the team path's dtype). It
// keeps the contiguous tensors it points into alive.
class InputRows {
 public:
  InputRows(const at::Tensor& gi, const c10::optional<at::Tensor>& ids, int64_t width)
      : gi_(gi.contiguous()), ids_(ids.has_value() ? checked_ids(*ids, gi.size(0)) : at::Tensor()) {
    TORCH_CHECK(gi_.size(-1) == width && gi_.dim() == (ids_.defined() ? 2 : 3), "input projections of shape ",
                gi_.sizes(), " do not have rows of ", width, ids_.defined() ? " (a V×width table)" : " (T×B×width)");
    base_ = gi_.data_ptr<float>();
    id_ = ids_.defined() ? ids_.data_ptr<int64_t>() : nullptr;
    width_ = width;
    const at::Tensor& shape = ids_.defined() ? ids_ : gi_;
    steps_ = shape.size(0);
    batch_ = shape.size(1);
  }

  const float* row(int64_t i) const { return base_ + (id_ ? id_[i] : i) * width_; }
  int64_t steps() const { return steps_; }
  int64_t batch() const { return batch_; }
  const at::Tensor& tensor() const { return gi_; }  // (for the options of the window's buffers)

 private:
  at::Tensor gi_, ids_;
  const float* base_ = nullptr;
  const int64_t* id_ = nullptr;
  int64_t width_ = 0, steps_ = 0, batch_ = 0;
};

// The gradient of what a window read: d_gi itself (T×B×width), or, where it read a `rows`-row table by ids,
// d_gi's rows summed into the table's rows.
inline at::Tensor table_gradient_of(const at::Tensor& d_gi, const c10::optional<at::Tensor>& ids, int64_t rows) {
  if (!ids.has_value()) return d_gi;
  const at::Tensor flat = d_gi.reshape({-1, d_gi.size(-1)});
  return at::zeros({rows, flat.size(1)}, flat.options()).index_add_(0, ids->reshape(-1), flat);
}

// The gradient of a window's input table (float32), summed position by position in the team backward's
// element-wise passes: each part adds the columns of its own units only, so no two parts write the same
// element and no pass over the window's T·B rows is left for after the loop. Without ids it holds nothing.
// The ids are the ones the forward read the table with, which InputRows checked there.
class TableGradient {
 public:
  TableGradient(const c10::optional<at::Tensor>& ids, int64_t rows, int64_t width, const at::Tensor& like) {
    if (!ids.has_value()) return;
    ids_ = ids->contiguous();
    grad_ = at::zeros({rows, width}, like.options());
    id_ = ids_.data_ptr<int64_t>();
    base_ = grad_.data_ptr<float>();
    width_ = width;
  }

  bool wanted() const { return id_ != nullptr; }

  // Add v[j] for the units [j0, j1) to columns col0 + j of the row of position i's id.
  void add(int64_t i, int64_t col0, const float* v, int64_t j0, int64_t j1) const {
    float* into = base_ + id_[i] * width_ + col0;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) into[j] += v[j];
  }

  // The table's gradient where there is one, else d_gi.
  at::Tensor or_rows(const at::Tensor& d_gi) const { return wanted() ? grad_ : d_gi; }

 private:
  at::Tensor ids_, grad_;
  const int64_t* id_ = nullptr;
  float* base_ = nullptr;
  int64_t width_ = 0;
};

}  // namespace gru_lm
