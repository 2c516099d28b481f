#include "xtuner/model/linear.h"

#include "xtuner/ops/ops.h"

namespace xt {

void LinearForward(float* out, const float* in, const Linear& l, int64_t T, int64_t I, int64_t O) {
  ops::linear_forward(out, in, l.w, T, I, O);
  if (l.b) ops::bias_forward(out, l.b, T, O);
  std::vector<float> z, y;
  for (const LoraRef& r : l.lora) {
    z.resize(T * r.rank);
    y.resize(T * r.rows);
    ops::linear_forward(z.data(), in, r.a, T, I, r.rank);             // z (T, r) = in A^T
    ops::linear_forward(y.data(), z.data(), r.b, T, r.rank, r.rows);  // y (T, rows) = z B^T
    ops::scale_columns(out, O, r.row0, y.data(), r.rows, 0, T, r.rows, r.scale, /*add=*/true);
  }
}

// With y = s (x A^T) B^T and z = x A^T: dB += s dy^T z, dz = s dy B, dA += dz^T x, dx += dz A.
void LinearBackward(float* din, const float* dout, const float* in, const Linear& l, int64_t T,
                    int64_t I, int64_t O, bool accumulate_din) {
  ops::linear_backward(din, l.dw, dout, in, l.w, T, I, O, accumulate_din);
  if (l.db) ops::bias_backward(l.db, dout, T, O);
  std::vector<float> z, dy, dz;
  for (const LoraRef& r : l.lora) {
    z.resize(T * r.rank);
    dy.resize(T * r.rows);
    dz.resize(T * r.rank);
    ops::linear_forward(z.data(), in, r.a, T, I, r.rank);
    // dy = s * dout[:, row0 : row0 + rows]
    ops::scale_columns(dy.data(), r.rows, 0, dout, O, r.row0, T, r.rows, r.scale, /*add=*/false);
    // dz (T, r) = dy B; dB (rows, r) += dy^T z
    ops::linear_backward(dz.data(), r.db, dy.data(), z.data(), r.b, T, r.rank, r.rows);
    // din += dz A; dA (r, I) += dz^T in
    ops::linear_backward(din, r.da, dz.data(), in, r.a, T, I, r.rank, /*accumulate_din=*/true);
  }
}

}  // namespace xt
