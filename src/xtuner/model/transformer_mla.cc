// Multi-head latent attention (DeepSeek-V3) on the op layer, as transformers computes it:
//   q  (T, Hq, D)        = q_b(rmsnorm(q_a(h1)))  or q_proj(h1)          D = nope + rope
//   [c_kv | k_rope] (T, Rkv + rope) = kv_a(h1)
//   [k_nope | v] (T, Hq, nope + v) = kv_b(rmsnorm(c_kv))
//   k  (T, Hq, D)        = [k_nope | rope(k_rope)], the one k_rope shared by every head
//   q's last rope dims are rotated too. With rope_interleave the rope dims hold interleaved pairs:
//   they are reordered (even dims, then odd dims) before the usual rotate-half RoPE, as
//   transformers' apply_rotary_pos_emb_interleave does.
// The attention op takes one head width for q, k and v, so v is padded with zeros to D: the
// padded output columns are zero and their gradients are dropped.
#include <algorithm>
#include <cmath>

#include "xtuner/model/transformer.h"
#include "xtuner/model/transformer_acts.h"
#include "xtuner/ops/ops.h"

namespace xt {

namespace {

// q_a_layernorm and kv_a_layernorm keep RMSNorm's default eps whatever rms_norm_eps says (so do
// transformers and DeepSeek's own code).
constexpr float kLatentNormEps = 1e-6f;

// out (N, dr) = the rope dims of rows of `in` (N rows of `stride`, rope dims at `at`), in the
// order RoPE rotates them (interleaved pairs de-interleaved: dims 0, 2, 4, ..., then 1, 3, ...).
void GatherRope(float* out, const float* in, int64_t N, int64_t stride, int64_t at, int64_t dr,
                bool interleave) {
  for (int64_t n = 0; n < N; ++n) {
    const float* x = in + n * stride + at;
    float* y = out + n * dr;
    for (int64_t i = 0; i < dr; ++i)
      y[i] = interleave ? x[i < dr / 2 ? 2 * i : 2 * (i - dr / 2) + 1] : x[i];
  }
}

// The inverse of GatherRope: rows of `out` at `at` = the rope dims of in (N, dr), back in the
// checkpoint's order.
void ScatterRope(float* out, const float* in, int64_t N, int64_t stride, int64_t at, int64_t dr,
                 bool interleave) {
  for (int64_t n = 0; n < N; ++n) {
    float* x = out + n * stride + at;
    const float* y = in + n * dr;
    for (int64_t i = 0; i < dr; ++i)
      x[interleave ? (i < dr / 2 ? 2 * i : 2 * (i - dr / 2) + 1) : i] = y[i];
  }
}

}  // namespace

void Transformer::MlaForward(int64_t l, const UnitParams& P, const Batch& b, Acts* acts,
                             LayerActs* a, KvCache* cache) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads, D = cfg_.head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dr = cfg_.qk_rope_head_dim, dv = cfg_.v_head_dim;
  const int64_t Rq = cfg_.q_lora_rank, Rkv = cfg_.kv_lora_rank;
  const bool il = cfg_.rope_interleave;
  const float eps = kLatentNormEps;

  // Queries, their rope dims rotated in place.
  a->q.resize(T * Hq * D);
  if (Rq > 0) {
    a->qa.resize(T * Rq);
    a->qa_n.resize(T * Rq);
    a->qa_rstd.resize(T);
    ops::linear_forward(a->qa.data(), a->h1.data(), P(o.q_a), T, H, Rq);
    ops::rmsnorm_forward(a->qa_n.data(), a->qa_rstd.data(), a->qa.data(), P(o.q_a_norm), T, Rq,
                         eps);
    ops::linear_forward(a->q.data(), a->qa_n.data(), P(o.wq), T, Rq, Hq * D);
  } else {
    ops::linear_forward(a->q.data(), a->h1.data(), P(o.wq), T, H, Hq * D);
  }
  vector<float> rot(T * Hq * dr);
  GatherRope(rot.data(), a->q.data(), T * Hq, D, dn, dr, il);
  ops::rope_forward(rot.data(), acts->cos.data(), acts->sin.data(), T, Hq, dr);
  for (int64_t n = 0; n < T * Hq; ++n)
    std::copy(rot.begin() + n * dr, rot.begin() + (n + 1) * dr, a->q.begin() + n * D + dn);

  // The latent KV, its per-head keys and values, and the shared rotated key.
  vector<float> ckv(T * (Rkv + dr)), kvb(T * Hq * (dn + dv));
  ops::linear_forward(ckv.data(), a->h1.data(), P(o.kv_a), T, H, Rkv + dr);
  a->kv_c.resize(T * Rkv);
  a->kv_n.resize(T * Rkv);
  a->kv_rstd.resize(T);
  for (int64_t t = 0; t < T; ++t)
    std::copy(ckv.begin() + t * (Rkv + dr), ckv.begin() + t * (Rkv + dr) + Rkv,
              a->kv_c.begin() + t * Rkv);
  ops::rmsnorm_forward(a->kv_n.data(), a->kv_rstd.data(), a->kv_c.data(), P(o.kv_a_norm), T, Rkv,
                       eps);
  ops::linear_forward(kvb.data(), a->kv_n.data(), P(o.kv_b), T, Rkv, Hq * (dn + dv));
  vector<float> kr(T * dr);
  GatherRope(kr.data(), ckv.data(), T, Rkv + dr, Rkv, dr, il);
  ops::rope_forward(kr.data(), acts->cos.data(), acts->sin.data(), T, 1, dr);
  a->k.assign(T * Hq * D, 0.0f);
  a->v.assign(T * Hq * D, 0.0f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      const float* src = kvb.data() + (t * Hq + h) * (dn + dv);
      float* k = a->k.data() + (t * Hq + h) * D;
      std::copy(src, src + dn, k);
      std::copy(kr.begin() + t * dr, kr.begin() + (t + 1) * dr, k + dn);
      std::copy(src + dn, src + dn + dv, a->v.data() + (t * Hq + h) * D);
    }

  vector<float> out(T * Hq * D);
  Attend(l, b, Hq, out.data(), a, cache);
  a->attn.resize(T * Hq * dv);
  for (int64_t n = 0; n < T * Hq; ++n)
    std::copy(out.begin() + n * D, out.begin() + n * D + dv, a->attn.begin() + n * dv);
}

// dattn (T, Hq * v) -> dh1 (T, H) assigned.
void Transformer::MlaBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b,
                              const float* dattn, float* dh1, Acts* acts, LayerActs* a) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads, D = cfg_.head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dr = cfg_.qk_rope_head_dim, dv = cfg_.v_head_dim;
  const int64_t Rq = cfg_.q_lora_rank, Rkv = cfg_.kv_lora_rank;
  const bool il = cfg_.rope_interleave;

  vector<float> dout(T * Hq * D, 0.0f), out(T * Hq * D, 0.0f);
  for (int64_t n = 0; n < T * Hq; ++n) {
    std::copy(dattn + n * dv, dattn + (n + 1) * dv, dout.begin() + n * D);
    std::copy(a->attn.begin() + n * dv, a->attn.begin() + (n + 1) * dv, out.begin() + n * D);
  }
  vector<float> dq(T * Hq * D), dk(T * Hq * D), dvp(T * Hq * D);
  ops::attention_backward(dq.data(), dk.data(), dvp.data(), dout.data(), out.data(), a->lse.data(),
                          a->q.data(), a->k.data(), a->v.data(), b.cu_seqlens.data(), b.num_docs(),
                          T, Hq, Hq, D, float(cfg_.softmax_scale()));

  // Queries: undo the rotation of the rope dims, then the projections.
  vector<float> rot(T * Hq * dr);
  for (int64_t n = 0; n < T * Hq; ++n)
    std::copy(dq.begin() + n * D + dn, dq.begin() + (n + 1) * D, rot.begin() + n * dr);
  ops::rope_backward(rot.data(), acts->cos.data(), acts->sin.data(), T, Hq, dr);
  ScatterRope(dq.data(), rot.data(), T * Hq, D, dn, dr, il);
  if (Rq > 0) {
    vector<float> dqa_n(T * Rq), dqa(T * Rq);
    ops::linear_backward(dqa_n.data(), G(o.wq), dq.data(), a->qa_n.data(), P(o.wq), T, Rq, Hq * D);
    ops::rmsnorm_backward(dqa.data(), G(o.q_a_norm), dqa_n.data(), a->qa.data(), P(o.q_a_norm),
                          a->qa_rstd.data(), T, Rq);
    ops::linear_backward(dh1, G(o.q_a), dqa.data(), a->h1.data(), P(o.q_a), T, H, Rq);
  } else {
    ops::linear_backward(dh1, G(o.wq), dq.data(), a->h1.data(), P(o.wq), T, H, Hq * D);
  }

  // Keys and values: per-head parts to kv_b; the shared rotated key summed over heads.
  vector<float> dkvb(T * Hq * (dn + dv)), dkr(T * dr, 0.0f), dckv(T * (Rkv + dr));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      const float* k = dk.data() + (t * Hq + h) * D;
      float* dst = dkvb.data() + (t * Hq + h) * (dn + dv);
      std::copy(k, k + dn, dst);
      std::copy(dvp.begin() + (t * Hq + h) * D, dvp.begin() + (t * Hq + h) * D + dv, dst + dn);
      for (int64_t i = 0; i < dr; ++i) dkr[t * dr + i] += k[dn + i];
    }
  ops::rope_backward(dkr.data(), acts->cos.data(), acts->sin.data(), T, 1, dr);
  ScatterRope(dckv.data(), dkr.data(), T, Rkv + dr, Rkv, dr, il);
  vector<float> dkv_n(T * Rkv), dkv_c(T * Rkv);
  ops::linear_backward(dkv_n.data(), G(o.kv_b), dkvb.data(), a->kv_n.data(), P(o.kv_b), T, Rkv,
                       Hq * (dn + dv));
  ops::rmsnorm_backward(dkv_c.data(), G(o.kv_a_norm), dkv_n.data(), a->kv_c.data(), P(o.kv_a_norm),
                        a->kv_rstd.data(), T, Rkv);
  for (int64_t t = 0; t < T; ++t)
    std::copy(dkv_c.begin() + t * Rkv, dkv_c.begin() + (t + 1) * Rkv,
              dckv.begin() + t * (Rkv + dr));
  ops::linear_backward(dh1, G(o.kv_a), dckv.data(), a->h1.data(), P(o.kv_a), T, H, Rkv + dr,
                       /*accumulate_din=*/true);
}

}  // namespace xt
