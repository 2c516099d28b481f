// The activations a Transformer keeps between a layer's forward and its backward (private to
// model/transformer*.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/dist/expert_parallel.h"
#include "xtuner/model/transformer.h"

namespace xt {

using std::vector;

// Everything one layer's backward needs (kept from the forward).
struct Transformer::LayerActs {
  vector<float> x_in;            // (T, H) layer input
  vector<float> h1, rstd1;       // (T, H), (T): input_layernorm
  vector<float> q_pre, k_pre;    // (T, Hq*D), (T, Hkv*D): projections before the q/k norm
  vector<float> q_rstd, k_rstd;  // (T*Hq), (T*Hkv)
  vector<float> q, k, v;         // after norm + RoPE: (T, Hq, D), (T, Hkv, D), (T, Hkv, D)
  // MLA (Hkv = Hq; v zero-padded to D): q_a's output, normed, and its rstd (T, Rq), (T, Rq),
  // (T); the latent c_kv, normed, and its rstd (T, Rkv), (T, Rkv), (T).
  vector<float> qa, qa_n, qa_rstd, kv_c, kv_n, kv_rstd;
  vector<float> attn, lse;  // (T, Hq*Dv), (T, Hq); Dv = D but under MLA
  vector<float> x_mid;      // (T, H) after the attention residual
  vector<float> h2, rstd2;  // (T, H), (T): post_attention_layernorm
  // Dense MLP: gu (T, 2I), act (T, I). MoE: the same per assignment row (A = T*k).
  vector<float> gu, act;
  // MoE only.
  vector<float> router_logits, probs, topk_w;          // (T, E), (T, E), (T, k)
  vector<int32_t> topk_idx, offsets, sorted, slot_of;  // (T, k), (E+1), (A), (A)
  vector<float> xs, ys;                                // (A, H), (A, H)
  vector<float> shared_gu, shared_act;                 // shared experts: (T, 2Is), (T, Is)
  // Expert parallelism: the rows this rank's experts received, (R, H) by local expert (gu and
  // act are then per received row).
  EpExchange ep;
  vector<float> xr;

  // Bytes held by the buffers above.
  int64_t bytes() const {
    int64_t n = 0;
    for (const vector<float>* b :
         {&x_in,  &h1,     &rstd1, &q_pre, &k_pre,     &q_rstd,     &k_rstd, &q,
          &k,     &v,      &qa,    &qa_n,  &qa_rstd,   &kv_c,       &kv_n,   &kv_rstd,
          &attn,  &lse,    &x_mid, &h2,    &rstd2,     &gu,         &act,    &router_logits,
          &probs, &topk_w, &xs,    &ys,    &shared_gu, &shared_act, &xr})
      n += int64_t(b->capacity() * sizeof(float));
    for (const vector<int32_t>* b : {&topk_idx, &offsets, &sorted, &slot_of})
      n += int64_t(b->capacity() * sizeof(int32_t));
    return n;
  }
};

struct Transformer::Acts {
  vector<float> cos, sin;  // (T, D/2)
  vector<LayerActs> layers;
  vector<float> x_final, rstd_final, h_final;  // (T, H), (T), (T, H)
};

}  // namespace xt
