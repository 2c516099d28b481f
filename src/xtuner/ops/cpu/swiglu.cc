// SwiGLU on a fused [gate | up] row: out = silu(gate) * up, silu(g) = g * sigmoid(g); and
// GPT-OSS's clamped variant.
#include <algorithm>
#include <cmath>

#include "xtuner/ops/cpu/fast_exp.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {

void swiglu_forward(float* out, const float* h, int64_t N, int64_t I) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = h + n * 2 * I;
    const float* u = g + I;
    float* y = out + n * I;
    for (int64_t i = 0; i < I; ++i) y[i] = g[i] / (1.0f + Exp(-g[i])) * u[i];
  }
}

// d/dg [g * sig(g)] = sig(g) * (1 + g * (1 - sig(g))).
void swiglu_backward(float* dh, const float* dout, const float* h, int64_t N, int64_t I) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* g = h + n * 2 * I;
    const float* u = g + I;
    const float* dy = dout + n * I;
    float* dg = dh + n * 2 * I;
    float* du = dg + I;
    for (int64_t i = 0; i < I; ++i) {
      float sig = 1.0f / (1.0f + Exp(-g[i]));
      du[i] = dy[i] * g[i] * sig;
      dg[i] = dy[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
    }
  }
}

void gpt_oss_glu_forward(float* out, const float* h, int64_t N, int64_t I, float alpha,
                         float limit) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* gate = h + n * 2 * I;
    const float* up = gate + I;
    float* y = out + n * I;
    for (int64_t i = 0; i < I; ++i) {
      const float g = std::min(gate[i], limit), u = std::clamp(up[i], -limit, limit);
      y[i] = (u + 1.0f) * (g / (1.0f + Exp(-alpha * g)));
    }
  }
}

// With s = sigmoid(alpha g): d/dg [g s] = s (1 + alpha g (1 - s)).
void gpt_oss_glu_backward(float* dh, const float* dout, const float* h, int64_t N, int64_t I,
                          float alpha, float limit) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* gate = h + n * 2 * I;
    const float* up = gate + I;
    const float* dy = dout + n * I;
    float* dg = dh + n * 2 * I;
    float* du = dg + I;
    for (int64_t i = 0; i < I; ++i) {
      const float g = std::min(gate[i], limit), u = std::clamp(up[i], -limit, limit);
      const float sig = 1.0f / (1.0f + Exp(-alpha * g));
      du[i] = up[i] >= -limit && up[i] <= limit ? dy[i] * g * sig : 0.0f;
      dg[i] =
          gate[i] <= limit ? dy[i] * (u + 1.0f) * sig * (1.0f + alpha * g * (1.0f - sig)) : 0.0f;
    }
  }
}

}  // namespace xt::ops
