// Attention over a KV cache, for generation: few queries, one sequence, no backward. A plain
// two-pass softmax per (query, head); the cache holds at most max_length positions. With a sink,
// its logit joins the max and the denominator (as in transformers' eager_attention_forward for
// gpt_oss); with a window, query position t sees keys t - window + 1 .. t only.
#include <algorithm>
#include <cmath>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {

void attention_cached_forward(float* out, const float* q, const float* k_cache,
                              const float* v_cache, int64_t past, int64_t Tq, int64_t Hq,
                              int64_t Hkv, int64_t D, float scale, const AttentionExtras& extras) {
  XT_CHECK(extras.window >= 0, "attention: window must be >= 0");
  const int64_t group = Hq / Hkv;
#pragma omp parallel
  {
    std::vector<float> p(past + Tq);
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < Tq; ++i) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t n = past + i + 1;  // keys j0 .. past + i
        const int64_t j0 = extras.window > 0 ? std::max<int64_t>(0, n - extras.window) : 0;
        const float* qi = q + (i * Hq + h) * D;
        const int64_t kvh = h / group;
        const float sink = extras.sinks ? extras.sinks[h] : -INFINITY;
        float m = sink;  // the max over the scores and the sink (finite: j0 < n)
        for (int64_t j = j0; j < n; ++j) {
          const float* kj = k_cache + (j * Hkv + kvh) * D;
          float s = 0;
          for (int64_t d = 0; d < D; ++d) s += qi[d] * kj[d];
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        float sum = std::exp(sink - m);  // 0 without a sink
        for (int64_t j = j0; j < n; ++j) sum += (p[j] = std::exp(p[j] - m));
        float* o = out + (i * Hq + h) * D;
        std::fill(o, o + D, 0.0f);
        for (int64_t j = j0; j < n; ++j) {
          const float* vj = v_cache + (j * Hkv + kvh) * D;
          const float w = p[j] / sum;
          for (int64_t d = 0; d < D; ++d) o[d] += w * vj[d];
        }
      }
    }
  }
}

}  // namespace xt::ops
