// MoE router on the GPU (ops::router_forward / router_backward): one thread per token running
// the CPU twin's loops in the CPU twin's order, so top-k ties, NaN handling and the sums' order
// are the CPU's. The exponential is exp in double rounded to float (glibc's expf is correctly
// rounded in all but rare cases, so the probabilities nearly always match bit for bit). Rows
// are read with a stride of E floats per thread: fine for a router's E (8..256).
#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

// The k largest of p (E) into idx (k), descending; on equal values the lower index first (a
// later candidate must be strictly greater to pass an earlier one); a NaN never passes anything.
// ops/cpu/router.cc's topk_desc.
__device__ void TopkDesc(int32_t* idx, const float* p, int64_t E, int64_t k) {
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

__global__ void RouterForwardKernel(int32_t* topk_idx, float* topk_w, float* probs,
                                    const float* logits, int64_t T, int64_t E, int64_t k,
                                    bool norm_topk) {
  for (int64_t t = detail::GlobalThread(); t < T; t += detail::GridThreads()) {
    const float* z = logits + t * E;  // (E)
    float* p = probs + t * E;         // (E)
    int32_t* idx = topk_idx + t * k;  // (k)
    float* w = topk_w + t * k;        // (k)
    float mx = z[0];
    for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
    float sum = 0.0f;
    for (int64_t e = 0; e < E; ++e) {
      p[e] = float(exp(double(z[e] - mx)));
      sum += p[e];
    }
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    TopkDesc(idx, p, E, k);
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
__global__ void RouterBackwardKernel(float* dlogits, const float* dtopk_w, const float* dprobs,
                                     const float* probs, const int32_t* topk_idx, int64_t T,
                                     int64_t E, int64_t k, bool norm_topk) {
  for (int64_t t = detail::GlobalThread(); t < T; t += detail::GridThreads()) {
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

constexpr int kRouterThreads = 128;

}  // namespace

Status RouterForward(int32_t* topk_idx, float* topk_w, float* probs, const float* logits, int64_t T,
                     int64_t E, int64_t k, bool norm_topk, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("router_forward", {T, E, k}));
  if (k < 1 || k > E)
    return Status::Error("router_forward: need 1 <= k <= E, got k = " + std::to_string(k) +
                         ", E = " + std::to_string(E));
  if (T == 0) return Status::OK();
  RouterForwardKernel<<<detail::BlocksFor(T, kRouterThreads), kRouterThreads, 0,
                        cudaStream_t(stream)>>>(topk_idx, topk_w, probs, logits, T, E, k,
                                                norm_topk);
  return Check(cudaGetLastError(), "router_forward launch");
}

Status RouterBackward(float* dlogits, const float* dtopk_w, const float* dprobs, const float* probs,
                      const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, bool norm_topk,
                      void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("router_backward", {T, E, k}));
  if (T == 0 || E == 0) return Status::OK();
  RouterBackwardKernel<<<detail::BlocksFor(T, kRouterThreads), kRouterThreads, 0,
                         cudaStream_t(stream)>>>(dlogits, dtopk_w, dprobs, probs, topk_idx, T, E, k,
                                                 norm_topk);
  return Check(cudaGetLastError(), "router_backward launch");
}

}  // namespace xt::cuda
