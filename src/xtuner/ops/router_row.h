// The MoE router of one token, forward and backward: the one definition that ops/cpu/router.cc
// (a loop over tokens) and cuda/router.cu (a thread per token) both run, so top-k ties, NaN
// handling and the order of every sum are the same on both. Plain C++17; under nvcc the functions
// are __host__ __device__.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define XT_HOST_DEVICE __host__ __device__
#else
#define XT_HOST_DEVICE
#endif

namespace xt::ops {

// exp(x) in float: glibc's expf on the host; on the device exp in double rounded to float (glibc's
// expf is correctly rounded in all but rare cases, so the two nearly always agree bit for bit).
XT_HOST_DEVICE inline float router_exp(float x) {
#if defined(__CUDA_ARCH__)
  return float(exp(double(x)));
#else
  return std::exp(x);
#endif
}

// Selects the k largest of p (E) into idx (k), descending; on equal values the lower index comes
// first (a later candidate must be strictly greater to pass an earlier one). O(E * k) worst case,
// no scratch; a NaN never passes anything, so it can only fill the tail.
XT_HOST_DEVICE inline void router_topk_desc(int32_t* idx, const float* p, int64_t E, int64_t k) {
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

// One token: p (E) = softmax(z (E)) in fp32; idx (k) its k largest, w (k) their probabilities,
// divided by their sum when norm_topk. Needs 1 <= k <= E (checked by the callers).
XT_HOST_DEVICE inline void router_forward_row(int32_t* idx, float* w, float* p, const float* z,
                                              int64_t E, int64_t k, bool norm_topk) {
  float mx = z[0];
  for (int64_t e = 1; e < E; ++e) mx = z[e] > mx ? z[e] : mx;
  float sum = 0.0f;
  for (int64_t e = 0; e < E; ++e) {
    p[e] = router_exp(z[e] - mx);
    sum += p[e];
  }
  for (int64_t e = 0; e < E; ++e) p[e] /= sum;
  router_topk_desc(idx, p, E, k);
  float s = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = p[idx[j]];
    s += w[j];
  }
  if (norm_topk) {
    for (int64_t j = 0; j < k; ++j) w[j] /= s;
  }
}

// One token, with g = dtopk_w (k) and the selected probabilities p_j:
//   dp = dprobs (E, or 0 when null), then dp[idx_j] += g_j          (no renormalisation), or
//   dp[idx_j] += (g_j - sum_i g_i w_i) / S, S = sum_i p_i           (w_j = p_j / S);
//   dlogits (E) = p * (dp - <p, dp>)                                (softmax backward).
XT_HOST_DEVICE inline void router_backward_row(float* dlogits, const float* g, const float* dprobs,
                                               const float* p, const int32_t* idx, int64_t E,
                                               int64_t k, bool norm_topk) {
  float* dp = dlogits;  // holds dL/dprobs first, then dL/dlogits
  for (int64_t e = 0; e < E; ++e) dp[e] = dprobs ? dprobs[e] : 0.0f;
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

}  // namespace xt::ops
