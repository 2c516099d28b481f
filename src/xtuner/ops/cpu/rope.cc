// Rotary position embedding in the HF "rotate_half" layout: element i pairs with i + D/2.
#include "xtuner/ops/ops.h"

namespace xt::ops {

namespace {
// sign = +1 rotates by +angle (forward), -1 by -angle (the transpose, for backward).
void rotate(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
            float sign) {
  int64_t half = D / 2;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int64_t h = 0; h < Hn; ++h) {
      float* v = x + (t * Hn + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        float a = v[i], b = v[i + half], si = sign * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D) {
  rotate(x, cos, sin, T, Hn, D, 1.0f);
}

void rope_backward(float* dx, const float* cos, const float* sin, int64_t T, int64_t Hn,
                   int64_t D) {
  rotate(dx, cos, sin, T, Hn, D, -1.0f);
}

}  // namespace xt::ops
