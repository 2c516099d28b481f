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

using ops::ColumnOrder;

void Transformer::MlaForward(int64_t l, const UnitParams& P, const Batch& b, Acts* acts,
                             LayerActs* a, KvCache* const* caches) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads, D = cfg_.head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dr = cfg_.qk_rope_head_dim, dv = cfg_.v_head_dim;
  const int64_t Rq = cfg_.q_lora_rank, Rkv = cfg_.kv_lora_rank;
  const ColumnOrder to_rope =
      cfg_.rope_interleave ? ColumnOrder::kDeinterleave : ColumnOrder::kSame;
  const float eps = ModelConfig::kLatentNormEps;

  // Queries, their rope dims rotated in place.
  a->q.resize(T * Hq * D);
  if (Rq > 0) {
    a->qa.resize(T * Rq);
    a->qa_n.resize(T * Rq);
    a->qa_rstd.resize(T);
    LinearForward(a->qa.data(), a->h1.data(), Lin(l, P, nullptr, o.q_a), T, H, Rq);
    ops::rmsnorm_forward(a->qa_n.data(), a->qa_rstd.data(), a->qa.data(), P(o.q_a_norm), T, Rq,
                         eps);
    LinearForward(a->q.data(), a->qa_n.data(), Lin(l, P, nullptr, o.wq), T, Rq, Hq * D);
  } else {
    LinearForward(a->q.data(), a->h1.data(), Lin(l, P, nullptr, o.wq), T, H, Hq * D);
  }
  vector<float> rot(T * Hq * dr);
  ops::copy_columns(rot.data(), dr, 0, a->q.data(), D, dn, T * Hq, dr, to_rope);
  ops::rope_forward(rot.data(), acts->cos.data(), acts->sin.data(), T, Hq, dr);
  ops::copy_columns(a->q.data(), D, dn, rot.data(), dr, 0, T * Hq, dr, ColumnOrder::kSame);

  // The latent KV, its per-head keys and values, and the shared rotated key.
  vector<float> ckv(T * (Rkv + dr)), kvb(T * Hq * (dn + dv));
  LinearForward(ckv.data(), a->h1.data(), Lin(l, P, nullptr, o.kv_a), T, H, Rkv + dr);
  a->kv_c.resize(T * Rkv);
  a->kv_n.resize(T * Rkv);
  a->kv_rstd.resize(T);
  ops::copy_columns(a->kv_c.data(), Rkv, 0, ckv.data(), Rkv + dr, 0, T, Rkv, ColumnOrder::kSame);
  ops::rmsnorm_forward(a->kv_n.data(), a->kv_rstd.data(), a->kv_c.data(), P(o.kv_a_norm), T, Rkv,
                       eps);
  LinearForward(kvb.data(), a->kv_n.data(), Lin(l, P, nullptr, o.kv_b), T, Rkv, Hq * (dn + dv));
  vector<float> kr(T * dr);
  ops::copy_columns(kr.data(), dr, 0, ckv.data(), Rkv + dr, Rkv, T, dr, to_rope);
  ops::rope_forward(kr.data(), acts->cos.data(), acts->sin.data(), T, 1, dr);
  a->k.resize(T * Hq * D);
  a->v.assign(T * Hq * D, 0.0f);  // the padding stays zero
  ops::copy_columns(a->k.data(), D, 0, kvb.data(), dn + dv, 0, T * Hq, dn, ColumnOrder::kSame);
  ops::copy_columns(a->v.data(), D, 0, kvb.data(), dn + dv, dn, T * Hq, dv, ColumnOrder::kSame);
  // Every head's key gets the token's one rotated k_rope.
  ops::copy_columns(a->k.data(), D, dn, kr.data(), dr, 0, T * Hq, dr, ColumnOrder::kSame, Hq);

  vector<float> out(T * Hq * D);
  Attend(l, P, b, Hq, out.data(), a, caches);
  a->attn.resize(T * Hq * dv);
  ops::copy_columns(a->attn.data(), dv, 0, out.data(), D, 0, T * Hq, dv, ColumnOrder::kSame);
}

// dattn (T, Hq * v) -> dh1 (T, H) assigned.
void Transformer::MlaBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b,
                              const float* dattn, float* dh1, Acts* acts, LayerActs* a) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads, D = cfg_.head_dim;
  const int64_t dn = cfg_.qk_nope_head_dim, dr = cfg_.qk_rope_head_dim, dv = cfg_.v_head_dim;
  const int64_t Rq = cfg_.q_lora_rank, Rkv = cfg_.kv_lora_rank;
  const ColumnOrder from_rope =
      cfg_.rope_interleave ? ColumnOrder::kInterleave : ColumnOrder::kSame;

  vector<float> dout(T * Hq * D, 0.0f), out(T * Hq * D, 0.0f);  // padded with zeros
  ops::copy_columns(dout.data(), D, 0, dattn, dv, 0, T * Hq, dv, ColumnOrder::kSame);
  ops::copy_columns(out.data(), D, 0, a->attn.data(), dv, 0, T * Hq, dv, ColumnOrder::kSame);
  vector<float> dq(T * Hq * D), dk(T * Hq * D), dvp(T * Hq * D);
  ops::attention_backward(dq.data(), dk.data(), dvp.data(), dout.data(), out.data(), a->lse.data(),
                          a->q.data(), a->k.data(), a->v.data(), b.cu_seqlens.data(), b.num_docs(),
                          T, Hq, Hq, D, float(cfg_.softmax_scale()));

  // Queries: undo the rotation of the rope dims, then the projections.
  vector<float> rot(T * Hq * dr);
  ops::copy_columns(rot.data(), dr, 0, dq.data(), D, dn, T * Hq, dr, ColumnOrder::kSame);
  ops::rope_backward(rot.data(), acts->cos.data(), acts->sin.data(), T, Hq, dr);
  ops::copy_columns(dq.data(), D, dn, rot.data(), dr, 0, T * Hq, dr, from_rope);
  if (Rq > 0) {
    vector<float> dqa_n(T * Rq), dqa(T * Rq);
    LinearBackward(dqa_n.data(), dq.data(), a->qa_n.data(), Lin(l, P, &G, o.wq), T, Rq, Hq * D);
    ops::rmsnorm_backward(dqa.data(), G(o.q_a_norm), dqa_n.data(), a->qa.data(), P(o.q_a_norm),
                          a->qa_rstd.data(), T, Rq);
    LinearBackward(dh1, dqa.data(), a->h1.data(), Lin(l, P, &G, o.q_a), T, H, Rq);
  } else {
    LinearBackward(dh1, dq.data(), a->h1.data(), Lin(l, P, &G, o.wq), T, H, Hq * D);
  }

  // Keys and values: per-head parts to kv_b; the shared rotated key summed over heads.
  vector<float> dkvb(T * Hq * (dn + dv)), dkr(T * dr), dckv(T * (Rkv + dr));
  ops::copy_columns(dkvb.data(), dn + dv, 0, dk.data(), D, 0, T * Hq, dn, ColumnOrder::kSame);
  ops::copy_columns(dkvb.data(), dn + dv, dn, dvp.data(), D, 0, T * Hq, dv, ColumnOrder::kSame);
  ops::sum_head_columns(dkr.data(), dk.data(), D, dn, T, Hq, dr);
  ops::rope_backward(dkr.data(), acts->cos.data(), acts->sin.data(), T, 1, dr);
  ops::copy_columns(dckv.data(), Rkv + dr, Rkv, dkr.data(), dr, 0, T, dr, from_rope);
  vector<float> dkv_n(T * Rkv), dkv_c(T * Rkv);
  LinearBackward(dkv_n.data(), dkvb.data(), a->kv_n.data(), Lin(l, P, &G, o.kv_b), T, Rkv,
                 Hq * (dn + dv));
  ops::rmsnorm_backward(dkv_c.data(), G(o.kv_a_norm), dkv_n.data(), a->kv_c.data(), P(o.kv_a_norm),
                        a->kv_rstd.data(), T, Rkv);
  ops::copy_columns(dckv.data(), Rkv + dr, 0, dkv_c.data(), Rkv, 0, T, Rkv, ColumnOrder::kSame);
  LinearBackward(dh1, dckv.data(), a->h1.data(), Lin(l, P, &G, o.kv_a), T, H, Rkv + dr,
                 /*accumulate_din=*/true);
}

}  // namespace xt
