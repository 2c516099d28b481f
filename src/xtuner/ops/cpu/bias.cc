// Bias rows: added to every row (or to each expert's rows), and their gradients as column sums
// taken in row order (deterministic for any thread count: threads split the columns).
#include "xtuner/ops/ops.h"

namespace xt::ops {

void bias_forward(float* out, const float* b, int64_t N, int64_t O) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) out[n * O + o] += b[o];
}

void bias_backward(float* db, const float* dout, int64_t N, int64_t O) {
  constexpr int64_t kCols = 64;  // a strip of columns per work item
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < O; c0 += kCols) {
    const int64_t c1 = c0 + kCols < O ? c0 + kCols : O;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = c0; o < c1; ++o) db[o] += dout[n * O + o];
  }
}

void grouped_bias_forward(float* out, const float* b, const int32_t* offsets, int64_t E,
                          int64_t O) {
  for (int64_t e = 0; e < E; ++e)
    bias_forward(out + int64_t(offsets[e]) * O, b + e * O, offsets[e + 1] - offsets[e], O);
}

void grouped_bias_backward(float* db, const float* dout, const int32_t* offsets, int64_t E,
                           int64_t O) {
  for (int64_t e = 0; e < E; ++e)
    bias_backward(db + e * O, dout + int64_t(offsets[e]) * O, offsets[e + 1] - offsets[e], O);
}

}  // namespace xt::ops
