// MoE router (softmax -> top-k -> optional renormalisation, as HF Qwen3-MoE / Mixtral do in fp32)
// and the per-layer statistics of the load-balancing loss. One token per loop iteration (the row
// functions of router_row.h, shared with the CUDA twin), so the result never depends on the
// thread count.
#include <omp.h>

#include <cmath>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"
#include "xtuner/ops/router_row.h"

namespace xt::ops {

void router_forward(int32_t* topk_idx, float* topk_w, float* probs, const float* logits, int64_t T,
                    int64_t E, int64_t k, bool norm_topk) {
  XT_CHECK(k >= 1 && k <= E, "router: need 1 <= k <= E");
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    router_forward_row(topk_idx + t * k, topk_w + t * k, probs + t * E, logits + t * E, E, k,
                       norm_topk);
}

void router_backward(float* dlogits, const float* dtopk_w, const float* dprobs, const float* probs,
                     const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, bool norm_topk) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    router_backward_row(dlogits + t * E, dtopk_w + t * k, dprobs ? dprobs + t * E : nullptr,
                        probs + t * E, topk_idx + t * k, E, k, norm_topk);
}

void router_sigmoid_forward(int32_t* topk_idx, float* topk_w, float* scores, const float* logits,
                            const float* bias, int64_t T, int64_t E, int64_t k, int64_t n_group,
                            int64_t topk_group, bool norm_topk, float scale) {
  XT_CHECK(router_sigmoid_sizes_ok(E, k, n_group, topk_group),
           "router_sigmoid: need n_group in [1, 64] groups of >= 2 experts, topk_group <= "
           "n_group and 1 <= k <= the experts of topk_group groups");
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    router_sigmoid_forward_row(topk_idx + t * k, topk_w + t * k, scores + t * E, logits + t * E,
                               bias, E, k, n_group, topk_group, norm_topk, scale);
}

void router_sigmoid_backward(float* dlogits, const float* dtopk_w, const float* scores,
                             const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                             bool norm_topk, float scale) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    router_sigmoid_backward_row(dlogits + t * E, dtopk_w + t * k, scores + t * E, topk_idx + t * k,
                                E, k, norm_topk, scale);
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
