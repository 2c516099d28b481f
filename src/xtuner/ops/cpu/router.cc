// MoE router (softmax -> top-k -> optional renormalisation, as HF Qwen3-MoE / Mixtral do in fp32)
// and the per-layer statistics of the load-balancing loss. One token per loop iteration, so the
// result never depends on the thread count.
#include <omp.h>

#include <cmath>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {

// Selects the k largest of p (E) into idx (k), descending; on equal values the lower index comes
// first (a later candidate must be strictly greater to pass an earlier one). O(E * k) worst case,
// no scratch; a NaN never passes anything, so it can only fill the tail.
static void topk_desc(int32_t* idx, const float* p, int64_t E, int64_t k) {
  int64_t n = 0;  // filled so far
  for (int64_t e = 0; e < E; ++e) {
    int64_t pos = n;
    while (pos > 0 && p[e] > p[idx[pos - 1]]) --pos;
    if (pos == k) continue;  // full and not larger than the smallest kept
    for (int64_t i = (n < k ? n : k - 1); i > pos; --i) idx[i] = idx[i - 1];
    idx[pos] = int32_t(e);
    if (n < k) ++n;
  }
}

void router_forward(int32_t* topk_idx, float* topk_w, float* probs, const float* logits, int64_t T,
                    int64_t E, int64_t k, bool norm_topk) {
  XT_CHECK(k >= 1 && k <= E, "router: need 1 <= k <= E");
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* z = logits + t * E;  // (E)
    float* p = probs + t * E;         // (E)
    int32_t* idx = topk_idx + t * k;  // (k)
    float* w = topk_w + t * k;        // (k)
    float mx = z[0];
    for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
    float sum = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = std::exp(z[e] - mx);
      sum += p[e];
    }
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    topk_desc(idx, p, E, k);
    float s = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      w[j] = p[idx[j]];
      s += w[j];
    }
    if (norm_topk) {
      for (int64_t j = 0; j < k; ++j) w[j] /= s;
    }
  }
}

// Per token, with g = dtopk_w and the selected probabilities p_j:
//   dp = dprobs (or 0), then dp[idx_j] += g_j                      (no renormalisation), or
//   dp[idx_j] += (g_j - sum_i g_i w_i) / S, S = sum_i p_i           (w_j = p_j / S);
//   dlogits = p * (dp - <p, dp>)                                    (softmax backward).
void router_backward(float* dlogits, const float* dtopk_w, const float* dprobs, const float* probs,
                     const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, bool norm_topk) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* p = probs + t * E;         // (E)
    const int32_t* idx = topk_idx + t * k;  // (k)
    const float* g = dtopk_w + t * k;       // (k)
    float* dp = dlogits + t * E;            // (E) holds dL/dprobs first, then dL/dlogits
    for (int64_t e = 0; e < E; ++e) dp[e] = dprobs ? dprobs[t * E + e] : 0.0f;
    if (norm_topk) {
      double s = 0, gw = 0;
      for (int64_t j = 0; j < k; ++j) s += p[idx[j]];
      for (int64_t j = 0; j < k; ++j) gw += double(g[j]) * (p[idx[j]] / s);
      for (int64_t j = 0; j < k; ++j) dp[idx[j]] += float((g[j] - gw) / s);
    } else {
      for (int64_t j = 0; j < k; ++j) dp[idx[j]] += g[j];
    }
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += double(p[e]) * dp[e];
    for (int64_t e = 0; e < E; ++e) dp[e] = float(p[e] * (dp[e] - dot));
  }
}

// count (E) and prob_sum (E) in double. Each thread owns a fixed range of experts and walks the
// tokens in order, so every sum has the same order whatever the thread count.
void moe_balance_stats(double* count, double* prob_sum, const float* probs, const int32_t* topk_idx,
                       int64_t T, int64_t E, int64_t k) {
#pragma omp parallel
  {
    int64_t nth = omp_get_num_threads(), id = omp_get_thread_num();
    int64_t e0 = E * id / nth, e1 = E * (id + 1) / nth;
    if (e1 > e0) {
      for (int64_t t = 0; t < T; ++t) {
        const float* p = probs + t * E;
        for (int64_t e = e0; e < e1; ++e) prob_sum[e] += p[e];
        for (int64_t j = 0; j < k; ++j) {
          int32_t e = topk_idx[t * k + j];
          if (e >= e0 && e < e1) count[e] += 1.0;
        }
      }
    }
  }
}

}  // namespace xt::ops
