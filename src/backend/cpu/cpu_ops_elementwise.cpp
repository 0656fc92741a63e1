// Row-wise and element-wise ops: norms, activations, residual adds and row/column copies.
// Each output element depends only on its own row, so threads split rows (or elements).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_backend_impl.hpp"
#include "backend/cpu/cpu_checks.hpp"

namespace moxin::cpu {
namespace {

// Fewer elements than this per thread cost more to hand out than to compute.
constexpr int64_t kMinElementsPerThread = 16384;

void parallel_rows(ThreadPool& pool, int64_t rows, int64_t cols,
                   const ThreadPool::RangeFn& fn) {
  pool.parallel_for(rows, fn, std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(1, cols)));
}

void parallel_elements(ThreadPool& pool, int64_t n, const ThreadPool::RangeFn& fn) {
  pool.parallel_for(n, fn, kMinElementsPerThread);
}

size_t row_bytes(const Tensor& t) { return static_cast<size_t>(t.cols()) * dtype_size(t.dtype); }

}  // namespace

void CpuBackend::layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& y) {
  check_f32(x, "layer_norm", "x");
  check_f32(y, "layer_norm", "y");
  check_same_matrix(x, y, "layer_norm", "x", "y");
  const int64_t C = x.cols();
  check_vector(w, C, "layer_norm", "weight");
  check_vector(b, C, "layer_norm", "bias");
  MOXIN_CHECK(C > 0, "[cpu] layer_norm: x ", x.shape_str(), " has no columns");
  const float *xs = x.ptr<float>(), *ws = w.ptr<float>(), *bs = b.ptr<float>();
  float* ys = y.ptr<float>();
  parallel_rows(pool_, x.rows(), C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) kernels_.layer_norm(xs + r * C, ws, bs, eps, C, ys + r * C);
  });
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  check_f32(x, "rms_norm", "x");
  check_f32(y, "rms_norm", "y");
  check_same_matrix(x, y, "rms_norm", "x", "y");
  const int64_t C = x.cols();
  check_vector(w, C, "rms_norm", "weight");
  MOXIN_CHECK(C > 0, "[cpu] rms_norm: x ", x.shape_str(), " has no columns");
  const float *xs = x.ptr<float>(), *ws = w.ptr<float>();
  float* ys = y.ptr<float>();
  parallel_rows(pool_, x.rows(), C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) kernels_.rms_norm(xs + r * C, ws, eps, C, ys + r * C);
  });
}

void CpuBackend::add_rms_norm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) {
  check_f32(x, "add_rms_norm", "x");
  check_f32(y, "add_rms_norm", "y");
  check_f32(out, "add_rms_norm", "out");
  check_same_matrix(x, y, "add_rms_norm", "x", "y");
  check_same_matrix(x, out, "add_rms_norm", "x", "out");
  const int64_t C = x.cols();
  check_vector(w, C, "add_rms_norm", "weight");
  MOXIN_CHECK(C > 0, "[cpu] add_rms_norm: x ", x.shape_str(), " has no columns");
  MOXIN_CHECK(!overlaps(out, x) && !overlaps(out, y), "[cpu] add_rms_norm: out must not overlap x or y");
  float* xs = x.ptr<float>();
  const float *ys = y.ptr<float>(), *ws = w.ptr<float>();
  float* os = out.ptr<float>();
  parallel_rows(pool_, x.rows(), C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) kernels_.add_rms_norm(xs + r * C, ys + r * C, ws, eps, C, os + r * C);
  });
}

void CpuBackend::gelu_erf(const Tensor& x, Tensor& y) {
  check_f32(x, "gelu_erf", "x");
  check_f32(y, "gelu_erf", "y");
  MOXIN_CHECK(x.numel() == y.numel(), "[cpu] gelu_erf: x is ", x.shape_str(), " but y is ", y.shape_str());
  const float* xs = x.ptr<float>();
  float* ys = y.ptr<float>();
  parallel_elements(pool_, x.numel(), [&](int64_t i0, int64_t i1) {
    if (ys != xs) std::copy(xs + i0, xs + i1, ys + i0);
    kernels_.gelu_erf(ys + i0, i1 - i0);
  });
}

void CpuBackend::swiglu(const Tensor& gate_up, Tensor& y) {
  check_f32(gate_up, "swiglu", "gate_up");
  check_f32(y, "swiglu", "y");
  const int64_t I = y.cols();
  MOXIN_CHECK(gate_up.rows() == y.rows() && gate_up.cols() == 2 * I, "[cpu] swiglu: gate_up is ",
              gate_up.shape_str(), " but y is ", y.shape_str(), " (gate_up needs [rows, 2 * y columns])");
  MOXIN_CHECK(!overlaps(gate_up, y), "[cpu] swiglu: y must not overlap gate_up");
  const float* gu = gate_up.ptr<float>();
  float* ys = y.ptr<float>();
  parallel_rows(pool_, y.rows(), I, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) kernels_.silu_mul(gu + r * 2 * I, gu + r * 2 * I + I, ys + r * I, I);
  });
}

void CpuBackend::add(Tensor& x, const Tensor& y) {
  check_f32(x, "add", "x");
  check_f32(y, "add", "y");
  check_same_matrix(x, y, "add", "x", "y");
  float* xs = x.ptr<float>();
  const float* ys = y.ptr<float>();
  parallel_elements(pool_, x.numel(), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) xs[i] += ys[i];
  });
}

void CpuBackend::add_scaled(Tensor& x, const Tensor& y, const Tensor& scale) {
  check_f32(x, "add_scaled", "x");
  check_f32(y, "add_scaled", "y");
  check_same_matrix(x, y, "add_scaled", "x", "y");
  const int64_t C = x.cols();
  check_vector(scale, C, "add_scaled", "scale");
  float* xs = x.ptr<float>();
  const float *ys = y.ptr<float>(), *s = scale.ptr<float>();
  parallel_rows(pool_, x.rows(), C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) xs[r * C + c] += s[c] * ys[r * C + c];
  });
}

void CpuBackend::add_rows_cyclic(Tensor& x, const Tensor& table) {
  check_f32(x, "add_rows_cyclic", "x");
  check_f32(table, "add_rows_cyclic", "table");
  const int64_t C = x.cols(), table_rows = table.rows();
  MOXIN_CHECK(table.cols() == C && table_rows > 0, "[cpu] add_rows_cyclic: table is ", table.shape_str(),
              " but x is ", x.shape_str(), " (the table needs rows of ", C, " columns)");
  float* xs = x.ptr<float>();
  const float* ts = table.ptr<float>();
  parallel_rows(pool_, x.rows(), C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* tr = ts + (r % table_rows) * C;
      for (int64_t c = 0; c < C; ++c) xs[r * C + c] += tr[c];
    }
  });
}

void CpuBackend::copy_rows(const Tensor& src, Tensor& dst, int64_t dst_row) {
  check_dtype(dst, dst.dtype, "copy_rows", "dst");
  check_dtype(src, dst.dtype, "copy_rows", "src");
  MOXIN_CHECK(src.cols() == dst.cols() && dst_row >= 0 && dst_row + src.rows() <= dst.rows(),
              "[cpu] copy_rows: cannot place src ", src.shape_str(), " at row ", dst_row, " of dst ",
              dst.shape_str());
  if (src.numel() == 0) return;
  std::memmove(static_cast<uint8_t*>(dst.data) + static_cast<size_t>(dst_row) * row_bytes(dst), src.data,
               src.nbytes());
}

void CpuBackend::copy_cols(const Tensor& src, Tensor& dst, int64_t col_offset) {
  check_dtype(dst, dst.dtype, "copy_cols", "dst");
  check_dtype(src, dst.dtype, "copy_cols", "src");
  MOXIN_CHECK(src.rows() == dst.rows() && col_offset >= 0 && col_offset + src.cols() <= dst.cols(),
              "[cpu] copy_cols: cannot place src ", src.shape_str(), " at column ", col_offset,
              " of dst ", dst.shape_str());
  MOXIN_CHECK(!overlaps(src, dst), "[cpu] copy_cols: src must not overlap dst");
  const size_t element = dtype_size(dst.dtype), src_row = row_bytes(src), dst_row = row_bytes(dst);
  const auto* s = static_cast<const uint8_t*>(src.data);
  auto* d = static_cast<uint8_t*>(dst.data) + static_cast<size_t>(col_offset) * element;
  for (int64_t r = 0; r < src.rows(); ++r) std::memcpy(d + r * dst_row, s + r * src_row, src_row);
}

void CpuBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) {
  check_dtype(rows, DType::I32, "gather_rows", "rows");
  check_dtype(x, x.dtype, "gather_rows", "x");
  check_dtype(y, x.dtype, "gather_rows", "y");
  const int64_t n = rows.numel();
  MOXIN_CHECK(y.rows() == n && y.cols() == x.cols(), "[cpu] gather_rows: y is ", y.shape_str(),
              " but gathering ", n, " rows of x ", x.shape_str(), " gives [", n, ", ", x.cols(), "]");
  MOXIN_CHECK(!overlaps(x, y), "[cpu] gather_rows: y must not overlap x");
  const int32_t* index = rows.ptr<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    MOXIN_CHECK(index[i] >= 0 && index[i] < x.rows(), "[cpu] gather_rows: row index ", index[i],
                " (entry ", i, ") is outside x ", x.shape_str());
  const size_t bytes = row_bytes(x);
  if (bytes == 0) return;
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(static_cast<uint8_t*>(y.data) + i * bytes,
                static_cast<const uint8_t*>(x.data) + static_cast<size_t>(index[i]) * bytes, bytes);
}

}  // namespace moxin::cpu
