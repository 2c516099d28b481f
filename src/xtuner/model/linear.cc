#include "xtuner/model/linear.h"

#include "xtuner/ops/ops.h"

namespace xt {
namespace {

// The adapter's input: `in`, or under dropout `in` masked into *masked.
const float* Masked(const LoraRef& r, const float* in, int64_t T, int64_t I,
                    std::vector<float>* masked) {
  if (!r.noise) return in;
  masked->resize(T * I);
  ops::dropout_mask(masked->data(), in, T, I, r.noise, r.salt, r.threshold, /*add=*/false);
  return masked->data();
}

}  // namespace

void LinearForward(float* out, const float* in, const Linear& l, int64_t T, int64_t I, int64_t O) {
  ops::linear_forward(out, in, l.w, T, I, O);
  if (l.b) ops::bias_forward(out, l.b, T, O);
  std::vector<float> z, y, masked;
  for (const LoraRef& r : l.lora) {
    z.resize(T * r.rank);
    y.resize(T * r.rows);
    const float* x = Masked(r, in, T, I, &masked);
    ops::linear_forward(z.data(), x, r.a, T, I, r.rank);              // z (T, r) = x A^T
    ops::linear_forward(y.data(), z.data(), r.b, T, r.rank, r.rows);  // y (T, rows) = z B^T
    ops::scale_columns(out, O, r.row0, y.data(), r.rows, 0, T, r.rows, r.scale, /*add=*/true);
  }
}

// With y = s (x A^T) B^T and z = x A^T: dB += s dy^T z, dz = s dy B, dA += dz^T x, dx += dz A
// (masked like x under dropout).
void LinearBackward(float* din, const float* dout, const float* in, const Linear& l, int64_t T,
                    int64_t I, int64_t O, bool accumulate_din) {
  ops::linear_backward(din, l.dw, dout, in, l.w, T, I, O, accumulate_din);
  if (l.db) ops::bias_backward(l.db, dout, T, O);
  std::vector<float> z, dy, dz, masked, dx;
  for (const LoraRef& r : l.lora) {
    z.resize(T * r.rank);
    dy.resize(T * r.rows);
    dz.resize(T * r.rank);
    const float* x = Masked(r, in, T, I, &masked);
    ops::linear_forward(z.data(), x, r.a, T, I, r.rank);
    // dy = s * dout[:, row0 : row0 + rows]
    ops::scale_columns(dy.data(), r.rows, 0, dout, O, r.row0, T, r.rows, r.scale, /*add=*/false);
    // dz (T, r) = dy B; dB (rows, r) += dy^T z
    ops::linear_backward(dz.data(), r.db, dy.data(), z.data(), r.b, T, r.rank, r.rows);
    // din += dz A (masked); dA (r, I) += dz^T x
    if (!r.noise || !din) {
      ops::linear_backward(din, r.da, dz.data(), x, r.a, T, I, r.rank, /*accumulate_din=*/true);
      continue;
    }
    dx.resize(T * I);
    ops::linear_backward(dx.data(), r.da, dz.data(), x, r.a, T, I, r.rank);
    ops::dropout_mask(din, dx.data(), T, I, r.noise, r.salt, r.threshold, /*add=*/true);
  }
}

}  // namespace xt
