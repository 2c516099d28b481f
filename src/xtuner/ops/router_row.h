// The MoE router of one token, forward and backward: the one definition that ops/cpu/router.cc
// (a loop over tokens) and cuda/router.cu (a thread per token) both run, so top-k ties, NaN
// handling and the order of every sum are the same on both. Plain C++17; under nvcc the functions
// are __host__ __device__.
#pragma once

#include <cmath>
#include <cstdint>

#include "xtuner/ops/host_device.h"

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

// ---- DeepSeek-V3: sigmoid scores, group-limited choice with a correction bias.
// One token: s (E) = sigmoid(z); the choice scores c = s + bias; each of the n_group groups of
// E / n_group experts is scored by the sum of its two largest c; the topk_group best groups are
// kept (ties: lower group first), c is set to -inf outside them (transformers 5 masks so; its
// 4.x and DeepSeek's code used 0, which differs only where a kept expert's c is negative), and
// idx (k) are the k largest of c. w_j = s[idx_j], divided by sum_j s[idx_j] + 1e-20 when
// norm_topk, times scale. The bias steers the choice only; the weights use the unbiased s. c is
// built in s's place and s computed again after the choice (the same bits), so no scratch; s
// must not alias z.
// Needs 2 <= E / n_group, 1 <= topk_group <= n_group <= 64, 1 <= k <= topk_group * E / n_group
// (checked by the config and the callers).
XT_HOST_DEVICE inline bool router_sigmoid_sizes_ok(int64_t E, int64_t k, int64_t n_group,
                                                   int64_t topk_group) {
  return n_group >= 1 && n_group <= 64 && E % n_group == 0 && E / n_group >= 2 && topk_group >= 1 &&
         topk_group <= n_group && k >= 1 && k <= topk_group * (E / n_group);
}

XT_HOST_DEVICE inline float router_sigmoid(float z) { return 1.0f / (1.0f + router_exp(-z)); }

XT_HOST_DEVICE inline void router_sigmoid_forward_row(int32_t* idx, float* w, float* s,
                                                      const float* z, const float* bias, int64_t E,
                                                      int64_t k, int64_t n_group,
                                                      int64_t topk_group, bool norm_topk,
                                                      float scale) {
  float* c = s;  // the choice scores first
  for (int64_t e = 0; e < E; ++e) c[e] = router_sigmoid(z[e]) + (bias ? bias[e] : 0.0f);
  const int64_t per = E / n_group;
  uint64_t kept = 0;  // bit g: group g kept
  for (int64_t r = 0; r < topk_group; ++r) {
    int64_t best = -1;
    float best_score = 0.0f;
    for (int64_t g = 0; g < n_group; ++g) {
      if (kept >> g & 1) continue;
      float a = c[g * per], b = c[g * per + 1];  // the two largest of the group: a >= b
      if (b > a) {
        const float t = a;
        a = b;
        b = t;
      }
      for (int64_t e = g * per + 2; e < (g + 1) * per; ++e) {
        if (c[e] > a) {
          b = a;
          a = c[e];
        } else if (c[e] > b) {
          b = c[e];
        }
      }
      const float score = a + b;
      if (best < 0 || score > best_score) best = g, best_score = score;
    }
    kept |= uint64_t(1) << best;
  }
  for (int64_t e = 0; e < E; ++e)
    if (!(kept >> (e / per) & 1)) c[e] = -INFINITY;
  router_topk_desc(idx, c, E, k);
  for (int64_t e = 0; e < E; ++e) s[e] = router_sigmoid(z[e]);
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = s[idx[j]];
    sum += w[j];
  }
  const float denom = norm_topk ? sum + 1e-20f : 1.0f;
  for (int64_t j = 0; j < k; ++j) w[j] = w[j] / denom * scale;
}

// One token, with g = dtopk_w (k) and r_j = s[idx_j], S = sum_j r_j + 1e-20:
//   dr_j = scale * g_j (no renormalisation), or scale * (g_j - sum_i g_i r_i / S) / S;
//   dlogits (E) = dr_j * s (1 - s) at idx_j, 0 elsewhere (the choice itself has no gradient).
XT_HOST_DEVICE inline void router_sigmoid_backward_row(float* dlogits, const float* g,
                                                       const float* s, const int32_t* idx,
                                                       int64_t E, int64_t k, bool norm_topk,
                                                       float scale) {
  for (int64_t e = 0; e < E; ++e) dlogits[e] = 0.0f;
  double S = 1.0, gr = 0.0;
  if (norm_topk) {
    S = 1e-20;
    for (int64_t j = 0; j < k; ++j) S += s[idx[j]];
    for (int64_t j = 0; j < k; ++j) gr += double(g[j]) * s[idx[j]];
  }
  for (int64_t j = 0; j < k; ++j) {
    const double dr = norm_topk ? scale * (g[j] - gr / S) / S : double(scale) * g[j];
    const float p = s[idx[j]];
    dlogits[idx[j]] = float(dr * p * (1.0 - p));
  }
}

}  // namespace xt::ops
