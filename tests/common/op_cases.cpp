#include "op_cases.hpp"

#include <cmath>
#include <limits>

#include "core/check.hpp"
#include "random_inputs.hpp"

namespace moxin::op_cases {
namespace {

struct Shape {
  int64_t rows, cols;
  size_t size() const { return static_cast<size_t>(rows * cols); }
  std::string str() const { return cat(rows, "x", cols); }
};
const std::vector<Shape> kShapes{{1, 1}, {1, 31}, {3, 33}, {5, 65}, {33, 257}, {2, 1024}, {7, 4096}};

// Results that are one or two f32 roundings from the exact value.
constexpr double kElementwiseTolerance = 1e-6;
// Norms sum a row in double, then take a few f32 roundings per element.
constexpr double kNormTolerance = 1e-6;

using Inputs = test_common::Random;

Tensor upload(Backend& be, const std::vector<float>& v, std::vector<int64_t> shape) {
  return be.from_host_f32(v.data(), shape);
}

Tensor nans(Backend& be, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> v(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
  return upload(be, v, std::move(shape));
}

std::vector<float> download(Backend& be, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  be.to_host_f32(t, v.data());
  return v;
}

// Per row: (x - mean) / sqrt(var + eps) * w + b, or x / sqrt(mean(x^2) + eps) * w.
std::vector<double> norm_reference(const std::vector<double>& x, Shape s, const std::vector<float>& w,
                                   const std::vector<float>* b, double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < s.rows; ++r) {
    const double* row = x.data() + r * s.cols;
    double mean = 0, spread = 0;
    if (b) {
      for (int64_t c = 0; c < s.cols; ++c) mean += row[c];
      mean /= static_cast<double>(s.cols);
    }
    for (int64_t c = 0; c < s.cols; ++c) spread += (row[c] - mean) * (row[c] - mean);
    spread /= static_cast<double>(s.cols);
    for (int64_t c = 0; c < s.cols; ++c)
      out[static_cast<size_t>(r * s.cols + c)] = (row[c] - mean) / std::sqrt(spread + eps) * w[c] + (b ? (*b)[c] : 0.0);
  }
  return out;
}

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

void layer_norm(std::vector<OpCase>& cases, Inputs& in, Shape s) {
  // An offset mean and a spread-out scale make a one-pass f32 variance visibly wrong.
  std::vector<float> x = in.uniform(s.size());
  for (float& v : x) v = v * 3.0f + 40.0f;
  const std::vector<float> w = in.uniform(static_cast<size_t>(s.cols)), b = in.uniform(static_cast<size_t>(s.cols));
  const float eps = 1e-6f;
  cases.push_back({"layer_norm " + s.str(), kNormTolerance, norm_reference(widen(x), s, w, &b, eps), [=](Backend& be) {
                     Tensor y = nans(be, {s.rows, s.cols});
                     be.layer_norm(upload(be, x, {s.rows, s.cols}), upload(be, w, {s.cols}), upload(be, b, {s.cols}), eps, y);
                     return download(be, y);
                   }});
}

void rms_norm(std::vector<OpCase>& cases, Inputs& in, Shape s) {
  const std::vector<float> x = in.uniform(s.size(), -4.0f, 4.0f), w = in.uniform(static_cast<size_t>(s.cols));
  const float eps = 1e-5f;
  const std::vector<double> ref = norm_reference(widen(x), s, w, nullptr, eps);
  cases.push_back({"rms_norm " + s.str(), kNormTolerance, ref, [=](Backend& be) {
                     Tensor y = nans(be, {s.rows, s.cols});
                     be.rms_norm(upload(be, x, {s.rows, s.cols}), upload(be, w, {s.cols}), eps, y);
                     return download(be, y);
                   }});
  cases.push_back({"rms_norm in place " + s.str(), kNormTolerance, ref, [=](Backend& be) {
                     Tensor xt = upload(be, x, {s.rows, s.cols});
                     be.rms_norm(xt, upload(be, w, {s.cols}), eps, xt);
                     return download(be, xt);
                   }});
}

// x += y, out = rms_norm(x): the reference adds and normalizes in double; outputs: x, then out.
void add_rms_norm(std::vector<OpCase>& cases, Inputs& in, Shape s) {
  const std::vector<float> x = in.uniform(s.size(), -4.0f, 4.0f), y = in.uniform(s.size(), -4.0f, 4.0f);
  const std::vector<float> w = in.uniform(static_cast<size_t>(s.cols));
  const float eps = 1e-5f;
  std::vector<double> ref(s.size());
  for (size_t i = 0; i < s.size(); ++i) ref[i] = static_cast<double>(x[i]) + y[i];
  const std::vector<double> normed = norm_reference(ref, s, w, nullptr, eps);
  ref.insert(ref.end(), normed.begin(), normed.end());
  cases.push_back({"add_rms_norm " + s.str(), kNormTolerance, ref, [=](Backend& be) {
                     Tensor xt = upload(be, x, {s.rows, s.cols});
                     Tensor out = nans(be, {s.rows, s.cols});
                     be.add_rms_norm(xt, upload(be, y, {s.rows, s.cols}), upload(be, w, {s.cols}), eps, out);
                     std::vector<float> got = download(be, xt);
                     const std::vector<float> o = download(be, out);
                     got.insert(got.end(), o.begin(), o.end());
                     return got;
                   }});
}

void gelu_erf(std::vector<OpCase>& cases, Inputs& in, Shape s) {
  const std::vector<float> x = in.uniform(s.size(), -6.0f, 6.0f);
  std::vector<double> ref;
  for (float v : x) ref.push_back(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
  cases.push_back({"gelu_erf " + s.str(), kElementwiseTolerance, ref, [=](Backend& be) {
                     Tensor t = upload(be, x, {s.rows, s.cols});
                     be.gelu_erf(t, t);
                     return download(be, t);
                   }});
}

// gate_up rows are gate | up; the reference reads both halves of each row.
void swiglu(std::vector<OpCase>& cases, Inputs& in, Shape s) {
  std::vector<float> gate_up;
  std::vector<double> ref(s.size());
  for (int64_t r = 0; r < s.rows; ++r) {
    const std::vector<float> g = in.uniform(static_cast<size_t>(s.cols), -8.0f, 8.0f);
    const std::vector<float> u = in.uniform(static_cast<size_t>(s.cols), -2.0f, 2.0f);
    gate_up.insert(gate_up.end(), g.begin(), g.end());
    gate_up.insert(gate_up.end(), u.begin(), u.end());
    for (int64_t c = 0; c < s.cols; ++c)
      ref[static_cast<size_t>(r * s.cols + c)] = g[c] / (1.0 + std::exp(-static_cast<double>(g[c]))) * u[c];
  }
  cases.push_back({"swiglu " + s.str(), kElementwiseTolerance, ref, [=](Backend& be) {
                     Tensor y = nans(be, {s.rows, s.cols});
                     be.swiglu(upload(be, gate_up, {s.rows, 2 * s.cols}), y);
                     return download(be, y);
                   }});
}

void residuals(std::vector<OpCase>& cases, Inputs& in, Shape s) {
  const std::vector<float> x = in.uniform(s.size()), y = in.uniform(s.size());
  // add_scaled rounds scale * y (or fuses it): an error relative to the operands, not to the sum.
  // Terms of one sign keep the sum at least as large as either, so the relative bound holds
  // (signed terms cancelled to ~1e-2 of a 1x1 case's operands and failed it, seed 208).
  const std::vector<float> x_pos = in.uniform(s.size(), 0.0f, 1.0f), y_pos = in.uniform(s.size(), 0.0f, 1.0f);
  const std::vector<float> scale = in.uniform(static_cast<size_t>(s.cols), 0.0f, 1.0f);
  const int64_t table_rows = std::max<int64_t>(1, s.rows / 2);
  const std::vector<float> table = in.uniform(static_cast<size_t>(table_rows * s.cols));
  std::vector<double> sum(s.size()), scaled(s.size()), cyclic(s.size());
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.cols; ++c) {
      const size_t i = static_cast<size_t>(r * s.cols + c);
      sum[i] = static_cast<double>(x[i]) + y[i];
      scaled[i] = x_pos[i] + static_cast<double>(scale[c]) * y_pos[i];
      cyclic[i] = static_cast<double>(x[i]) + table[static_cast<size_t>((r % table_rows) * s.cols + c)];
    }
  cases.push_back({"add " + s.str(), kElementwiseTolerance, sum, [=](Backend& be) {
                     Tensor xt = upload(be, x, {s.rows, s.cols});
                     be.add(xt, upload(be, y, {s.rows, s.cols}));
                     return download(be, xt);
                   }});
  cases.push_back({"add_scaled " + s.str(), kElementwiseTolerance, scaled, [=](Backend& be) {
                     Tensor xt = upload(be, x_pos, {s.rows, s.cols});
                     be.add_scaled(xt, upload(be, y_pos, {s.rows, s.cols}), upload(be, scale, {s.cols}));
                     return download(be, xt);
                   }});
  cases.push_back({"add_rows_cyclic " + s.str(), kElementwiseTolerance, cyclic, [=](Backend& be) {
                     Tensor xt = upload(be, x, {s.rows, s.cols});
                     be.add_rows_cyclic(xt, upload(be, table, {1, table_rows, s.cols}));
                     return download(be, xt);
                   }});
}

}  // namespace

std::vector<OpCase> all_cases(uint32_t seed) {
  Inputs in(seed);
  std::vector<OpCase> cases;
  for (const auto add : {layer_norm, rms_norm, add_rms_norm, gelu_erf, swiglu, residuals})
    for (const Shape& s : kShapes) add(cases, in, s);
  return cases;
}

}  // namespace moxin::op_cases
