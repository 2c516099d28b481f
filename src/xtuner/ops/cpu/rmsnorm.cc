// RMSNorm: out = in * rsqrt(mean(in^2) + eps) * w, over rows of C elements.
#include <cmath>
#include <vector>

#include "xtuner/ops/ops.h"

namespace xt::ops {

void rmsnorm_forward(float* out, float* rstd, const float* in, const float* w, int64_t N, int64_t C,
                     float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = in + n * C;
    float* y = out + n * C;
    double ss = 0;  // sum of squares in double: C can be large, fp32 drifts
    for (int64_t c = 0; c < C; ++c) ss += double(x[c]) * x[c];
    float r = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) y[c] = x[c] * r * w[c];
  }
}

// With xhat = x * r and y = xhat * w:
//   dx = r * (dy*w - xhat * mean(dy*w*xhat)),   dw += sum_n dy * xhat.
void rmsnorm_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                      const float* rstd, int64_t N, int64_t C, bool accumulate_din) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = in + n * C;
    const float* dy = dout + n * C;
    float* dx = din + n * C;
    float r = rstd[n];
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += double(dy[c]) * w[c] * x[c] * r;
    float m = float(dot / double(C));
    for (int64_t c = 0; c < C; ++c) {
      float g = r * (dy[c] * w[c] - x[c] * r * m);
      dx[c] = accumulate_din ? dx[c] + g : g;
    }
  }
  if (!dw) return;  // a frozen weight
  // dw: each thread owns a range of columns and sums the rows in order (thread-count independent).
  constexpr int64_t kCols = 16;
#pragma omp parallel for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += kCols) {
    int64_t c1 = std::min(C, c0 + kCols);
    double acc[kCols] = {0};
    for (int64_t n = 0; n < N; ++n) {
      const float* x = in + n * C;
      const float* dy = dout + n * C;
      float r = rstd[n];
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += double(dy[c]) * (x[c] * r);
    }
    for (int64_t c = c0; c < c1; ++c) dw[c] += float(acc[c - c0]);
  }
}

}  // namespace xt::ops
