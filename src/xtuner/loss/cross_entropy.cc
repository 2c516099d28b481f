#include "xtuner/loss/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "xtuner/ops/cpu/fast_exp.h"
#include "xtuner/ops/ops.h"

namespace xt {

int64_t DefaultLossChunkRows(int64_t V, bool gpu) {
  const int64_t logits = int64_t(1) << (gpu ? 28 : 25);
  return std::max<int64_t>(1, logits / std::max<int64_t>(V, 1));
}

double chunked_cross_entropy(float* dh, float* dw, const float* h, const float* w,
                             const int32_t* targets, int64_t T, int64_t H, int64_t V, double weight,
                             int64_t chunk_rows) {
  std::vector<int64_t> rows;  // tokens that carry a loss
  for (int64_t t = 0; t < T; ++t)
    if (targets[t] != kIgnoreIndex) rows.push_back(t);
  if (dh) std::memset(dh, 0, sizeof(float) * T * H);
  if (chunk_rows <= 0) chunk_rows = DefaultLossChunkRows(V, false);
  const int64_t n = int64_t(rows.size());
  const int64_t C = std::min(chunk_rows, std::max<int64_t>(n, 1));
  std::vector<float> hc(C * H), logits(C * V), dhc(dh ? C * H : 0);
  std::vector<double> loss_rows(C);
  double total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += C) {
    const int64_t c = std::min(C, n - c0);
    for (int64_t i = 0; i < c; ++i) std::memcpy(&hc[i * H], h + rows[c0 + i] * H, H * 4);
    ops::gemm(logits.data(), hc.data(), w, c, V, H, false, true, 0.0f);  // (c, V)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < c; ++i) {
      float* z = &logits[i * V];
      const int32_t y = targets[rows[c0 + i]];
      float m = z[0];
      for (int64_t v = 1; v < V; ++v) m = std::max(m, z[v]);
      const float zy = z[y];
      // e = exp(z - m) in place (vectorized), summed in double.
      for (int64_t v = 0; v < V; ++v) z[v] = ops::Exp(z[v] - m);
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += z[v];
      loss_rows[i] = double(m) + std::log(s) - double(zy);
      if (dh) {  // dlogits = weight * (softmax - onehot), in place
        const float scale = float(weight / s);
        for (int64_t v = 0; v < V; ++v) z[v] *= scale;
        z[y] -= float(weight);
      }
    }
    for (int64_t i = 0; i < c; ++i) total += loss_rows[i];  // fixed order
    if (dh) {
      ops::gemm(dhc.data(), logits.data(), w, c, H, V, false, false, 0.0f);  // (c,V) @ (V,H)
      for (int64_t i = 0; i < c; ++i) std::memcpy(dh + rows[c0 + i] * H, &dhc[i * H], H * 4);
      if (dw) ops::gemm(dw, logits.data(), hc.data(), V, H, c, true, false, 1.0f);  // (c,V)^T@(c,H)
    }
  }
  return total;
}

void lm_head_logits(float* logits, const float* h, const float* w, int64_t T, int64_t H,
                    int64_t V) {
  ops::linear_forward(logits, h, w, T, H, V);
}

}  // namespace xt
