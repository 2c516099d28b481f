// Multi-head latent attention (DeepSeek-V3) in CudaModel's step: Transformer::MlaForward and
// MlaBackward (model/transformer_mla.cc) step for step on the CUDA ops, the same column moves
// (ops::copy_columns' twins) around the same products, norms, RoPE and attention:
//   q  (T, Hq, D)                   = q_b(rmsnorm(q_a(h1)))  or q_proj(h1)       D = nope + rope
//   [c_kv | k_rope] (T, Rkv + rope) = kv_a(h1)
//   [k_nope | v] (T, Hq, nope + v)  = kv_b(rmsnorm(c_kv))
//   k  (T, Hq, D)                   = [k_nope | rope(k_rope)], one k_rope for every head
// The attention kernels take one head width, so v is padded with zeros to D; the output's
// padded columns are dropped before o_proj. Attention runs on the fp32 kernels in both
// precisions (as the CPU's bf16 mode does). Every buffer is allocated and freed on the step's
// stream in the order plan/cuda_step.cc walks.
#include "xtuner/cuda/attention_block.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {

using F = DeviceArray<float>;
using ops::ColumnOrder;

Status AttentionBlock::MlaForward(AttentionActs* a, F* out, const float* h1, const uint16_t* h1_16,
                                  const UnitParams& P, const LayerOffsets& o, const Mark& part) {
  const int64_t T = batch_.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads;
  const int64_t D = cfg_.head_dim, dn = cfg_.qk_nope_head_dim, dr = cfg_.qk_rope_head_dim;
  const int64_t dv = cfg_.v_head_dim, Rq = cfg_.q_lora_rank, Rkv = cfg_.kv_lora_rank;
  const ColumnOrder to_rope =
      cfg_.rope_interleave ? ColumnOrder::kDeinterleave : ColumnOrder::kSame;
  const float eps = ModelConfig::kLatentNormEps;
  void* s = stream_;
  StepProducts& mm = mm_;

  // Queries.
  XT_RETURN_IF_ERROR(part("qkv_proj"));
  XT_RETURN_IF_ERROR(a->q.Alloc(T * Hq * D, s));
  if (Rq > 0) {
    XT_RETURN_IF_ERROR(a->qa.Alloc(T * Rq, s));
    XT_RETURN_IF_ERROR(a->qa_n.Alloc(T * Rq, s));
    XT_RETURN_IF_ERROR(a->qa_rstd.Alloc(T, s));
    XT_RETURN_IF_ERROR(mm.Linear(a->qa.get(), h1, P(o.q_a), T, H, Rq, false, h1_16));
    XT_RETURN_IF_ERROR(lora_.Forward(a->qa.get(), h1, h1_16, P, o, o.q_a, T, H, Rq));
    XT_RETURN_IF_ERROR(
        RmsnormForward(a->qa_n.get(), a->qa_rstd.get(), a->qa.get(), P(o.q_a_norm), T, Rq, eps, s));
    XT_RETURN_IF_ERROR(mm.Linear(a->q.get(), a->qa_n.get(), P(o.wq), T, Rq, Hq * D));
    XT_RETURN_IF_ERROR(
        lora_.Forward(a->q.get(), a->qa_n.get(), nullptr, P, o, o.wq, T, Rq, Hq * D));
  } else {
    XT_RETURN_IF_ERROR(mm.Linear(a->q.get(), h1, P(o.wq), T, H, Hq * D, false, h1_16));
    XT_RETURN_IF_ERROR(lora_.Forward(a->q.get(), h1, h1_16, P, o, o.wq, T, H, Hq * D));
  }

  // The latent kv, normed; its per-head keys and values; the shared key part, unrotated.
  F ckv, kvb, kr;
  XT_RETURN_IF_ERROR(ckv.Alloc(T * (Rkv + dr), s));
  XT_RETURN_IF_ERROR(mm.Linear(ckv.get(), h1, P(o.kv_a), T, H, Rkv + dr, false, h1_16));
  XT_RETURN_IF_ERROR(lora_.Forward(ckv.get(), h1, h1_16, P, o, o.kv_a, T, H, Rkv + dr));
  XT_RETURN_IF_ERROR(a->kv_c.Alloc(T * Rkv, s));
  XT_RETURN_IF_ERROR(a->kv_n.Alloc(T * Rkv, s));
  XT_RETURN_IF_ERROR(a->kv_rstd.Alloc(T, s));
  XT_RETURN_IF_ERROR(
      CopyColumns(a->kv_c.get(), Rkv, 0, ckv.get(), Rkv + dr, 0, T, Rkv, ColumnOrder::kSame, 1, s));
  XT_RETURN_IF_ERROR(RmsnormForward(a->kv_n.get(), a->kv_rstd.get(), a->kv_c.get(), P(o.kv_a_norm),
                                    T, Rkv, eps, s));
  XT_RETURN_IF_ERROR(kvb.Alloc(T * Hq * (dn + dv), s));
  XT_RETURN_IF_ERROR(mm.Linear(kvb.get(), a->kv_n.get(), P(o.kv_b), T, Rkv, Hq * (dn + dv)));
  XT_RETURN_IF_ERROR(
      lora_.Forward(kvb.get(), a->kv_n.get(), nullptr, P, o, o.kv_b, T, Rkv, Hq * (dn + dv)));
  XT_RETURN_IF_ERROR(kr.Alloc(T * dr, s));
  XT_RETURN_IF_ERROR(CopyColumns(kr.get(), dr, 0, ckv.get(), Rkv + dr, Rkv, T, dr, to_rope, 1, s));
  ckv = F();

  // RoPE on the queries' last dr columns (through a (T, Hq, dr) copy) and on the shared key part.
  XT_RETURN_IF_ERROR(part("rope"));
  {
    F rot;
    XT_RETURN_IF_ERROR(rot.Alloc(T * Hq * dr, s));
    XT_RETURN_IF_ERROR(CopyColumns(rot.get(), dr, 0, a->q.get(), D, dn, T * Hq, dr, to_rope, 1, s));
    XT_RETURN_IF_ERROR(RopeForward(rot.get(), cos_, sin_, T, Hq, dr, s));
    XT_RETURN_IF_ERROR(
        CopyColumns(a->q.get(), D, dn, rot.get(), dr, 0, T * Hq, dr, ColumnOrder::kSame, 1, s));
  }
  XT_RETURN_IF_ERROR(RopeForward(kr.get(), cos_, sin_, T, 1, dr, s));

  // Keys and values as the kernels take them: (T, Hq, D), v's padding zero.
  XT_RETURN_IF_ERROR(a->k.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(a->v.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(a->v.Zero(s));
  XT_RETURN_IF_ERROR(
      CopyColumns(a->k.get(), D, 0, kvb.get(), dn + dv, 0, T * Hq, dn, ColumnOrder::kSame, 1, s));
  XT_RETURN_IF_ERROR(
      CopyColumns(a->v.get(), D, 0, kvb.get(), dn + dv, dn, T * Hq, dv, ColumnOrder::kSame, 1, s));
  XT_RETURN_IF_ERROR(
      CopyColumns(a->k.get(), D, dn, kr.get(), dr, 0, T * Hq, dr, ColumnOrder::kSame, Hq, s));
  kvb = F();
  kr = F();

  XT_RETURN_IF_ERROR(part("attention_fwd"));
  {
    F padded;  // the output (T, Hq, D), its last D - dv columns zero
    XT_RETURN_IF_ERROR(padded.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(a->lse.Alloc(T * Hq, s));
    XT_RETURN_IF_ERROR(AttentionForward(padded.get(), a->lse.get(), a->q.get(), a->k.get(),
                                        a->v.get(), batch_.cu_seqlens.data(), batch_.num_docs(), T,
                                        Hq, Hq, D, float(cfg_.softmax_scale()), s));
    XT_RETURN_IF_ERROR(a->attn.Alloc(T * Hq * dv, s));
    XT_RETURN_IF_ERROR(CopyColumns(a->attn.get(), dv, 0, padded.get(), D, 0, T * Hq, dv,
                                   ColumnOrder::kSame, 1, s));
  }
  XT_RETURN_IF_ERROR(part("o_proj"));
  XT_RETURN_IF_ERROR(out->Alloc(T * H, s));
  XT_RETURN_IF_ERROR(mm.Linear(out->get(), a->attn.get(), P(o.wo), T, Hq * dv, H));
  return lora_.Forward(out->get(), a->attn.get(), nullptr, P, o, o.wo, T, Hq * dv, H);
}

Status AttentionBlock::MlaBackward(float* dh1, const float* dout, const AttentionActs& a,
                                   const float* h1, const uint16_t* h1_16, const UnitParams& P,
                                   const UnitGrads& G, const LayerOffsets& o, const Mark& mark) {
  const int64_t T = batch_.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads;
  const int64_t D = cfg_.head_dim, dn = cfg_.qk_nope_head_dim, dr = cfg_.qk_rope_head_dim;
  const int64_t dv = cfg_.v_head_dim, Rq = cfg_.q_lora_rank, Rkv = cfg_.kv_lora_rank;
  const ColumnOrder from_rope =
      cfg_.rope_interleave ? ColumnOrder::kInterleave : ColumnOrder::kSame;
  void* s = stream_;
  StepProducts& mm = mm_;

  XT_RETURN_IF_ERROR(mark("o_proj_bwd"));
  XT_RETURN_IF_ERROR(mm.LinearBackward(dattn_.get(), G(o.wo), dout, a.attn.get(), P(o.wo), T,
                                       Hq * dv, H, false, false));
  XT_RETURN_IF_ERROR(lora_.Backward(dattn_.get(), dout, nullptr, a.attn.get(), nullptr, P, G, o,
                                    o.wo, T, Hq * dv, H));
  XT_RETURN_IF_ERROR(mark("attention_bwd"));
  {
    F dout_padded, out_padded;  // (T, Hq, D), padded with zeros as in the forward
    XT_RETURN_IF_ERROR(dout_padded.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(out_padded.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(dout_padded.Zero(s));
    XT_RETURN_IF_ERROR(out_padded.Zero(s));
    XT_RETURN_IF_ERROR(CopyColumns(dout_padded.get(), D, 0, dattn_.get(), dv, 0, T * Hq, dv,
                                   ColumnOrder::kSame, 1, s));
    XT_RETURN_IF_ERROR(CopyColumns(out_padded.get(), D, 0, a.attn.get(), dv, 0, T * Hq, dv,
                                   ColumnOrder::kSame, 1, s));
    XT_RETURN_IF_ERROR(AttentionBackward(dq_.get(), dk_.get(), dv_.get(), dout_padded.get(),
                                         out_padded.get(), a.lse.get(), a.q.get(), a.k.get(),
                                         a.v.get(), batch_.cu_seqlens.data(), batch_.num_docs(), T,
                                         Hq, Hq, D, float(cfg_.softmax_scale()), s));
  }

  // RoPE's transpose: the queries' rope columns (back to their interleaved order), and the shared
  // key part, summed over the heads that read it.
  XT_RETURN_IF_ERROR(mark("rope_bwd"));
  {
    F rot;
    XT_RETURN_IF_ERROR(rot.Alloc(T * Hq * dr, s));
    XT_RETURN_IF_ERROR(
        CopyColumns(rot.get(), dr, 0, dq_.get(), D, dn, T * Hq, dr, ColumnOrder::kSame, 1, s));
    XT_RETURN_IF_ERROR(RopeBackward(rot.get(), cos_, sin_, T, Hq, dr, s));
    XT_RETURN_IF_ERROR(
        CopyColumns(dq_.get(), D, dn, rot.get(), dr, 0, T * Hq, dr, from_rope, 1, s));
  }
  F dkr;
  XT_RETURN_IF_ERROR(dkr.Alloc(T * dr, s));
  XT_RETURN_IF_ERROR(SumHeadColumns(dkr.get(), dk_.get(), D, dn, T, Hq, dr, s));
  XT_RETURN_IF_ERROR(RopeBackward(dkr.get(), cos_, sin_, T, 1, dr, s));

  XT_RETURN_IF_ERROR(mark("qkv_proj_bwd"));
  if (Rq > 0) {
    F dqa_n, dqa;
    XT_RETURN_IF_ERROR(dqa_n.Alloc(T * Rq, s));
    XT_RETURN_IF_ERROR(dqa.Alloc(T * Rq, s));
    XT_RETURN_IF_ERROR(mm.LinearBackward(dqa_n.get(), G(o.wq), dq_.get(), a.qa_n.get(), P(o.wq), T,
                                         Rq, Hq * D, false, false));
    XT_RETURN_IF_ERROR(lora_.Backward(dqa_n.get(), dq_.get(), nullptr, a.qa_n.get(), nullptr, P, G,
                                      o, o.wq, T, Rq, Hq * D));
    XT_RETURN_IF_ERROR(writes_.Prepare(G(o.q_a_norm), Rq, s));
    XT_RETURN_IF_ERROR(RmsnormBackward(dqa.get(), G(o.q_a_norm), dqa_n.get(), a.qa.get(),
                                       P(o.q_a_norm), a.qa_rstd.get(), T, Rq, false, s));
    XT_RETURN_IF_ERROR(
        mm.LinearBackward(dh1, G(o.q_a), dqa.get(), h1, P(o.q_a), T, H, Rq, false, false, h1_16));
    XT_RETURN_IF_ERROR(
        lora_.Backward(dh1, dqa.get(), nullptr, h1, h1_16, P, G, o, o.q_a, T, H, Rq));
  } else {
    XT_RETURN_IF_ERROR(
        mm.LinearBackward(dh1, G(o.wq), dq_.get(), h1, P(o.wq), T, H, Hq * D, false, false, h1_16));
    XT_RETURN_IF_ERROR(
        lora_.Backward(dh1, dq_.get(), nullptr, h1, h1_16, P, G, o, o.wq, T, H, Hq * D));
  }

  // Keys and values: their per-head parts to kv_b; the shared key part to kv_a's last columns.
  F dkvb, dckv, dkv_n, dkv_c;
  XT_RETURN_IF_ERROR(dkvb.Alloc(T * Hq * (dn + dv), s));
  XT_RETURN_IF_ERROR(
      CopyColumns(dkvb.get(), dn + dv, 0, dk_.get(), D, 0, T * Hq, dn, ColumnOrder::kSame, 1, s));
  XT_RETURN_IF_ERROR(
      CopyColumns(dkvb.get(), dn + dv, dn, dv_.get(), D, 0, T * Hq, dv, ColumnOrder::kSame, 1, s));
  XT_RETURN_IF_ERROR(dckv.Alloc(T * (Rkv + dr), s));
  XT_RETURN_IF_ERROR(
      CopyColumns(dckv.get(), Rkv + dr, Rkv, dkr.get(), dr, 0, T, dr, from_rope, 1, s));
  dkr = F();
  XT_RETURN_IF_ERROR(dkv_n.Alloc(T * Rkv, s));
  XT_RETURN_IF_ERROR(mm.LinearBackward(dkv_n.get(), G(o.kv_b), dkvb.get(), a.kv_n.get(), P(o.kv_b),
                                       T, Rkv, Hq * (dn + dv), false, false));
  XT_RETURN_IF_ERROR(lora_.Backward(dkv_n.get(), dkvb.get(), nullptr, a.kv_n.get(), nullptr, P, G,
                                    o, o.kv_b, T, Rkv, Hq * (dn + dv)));
  dkvb = F();
  XT_RETURN_IF_ERROR(dkv_c.Alloc(T * Rkv, s));
  XT_RETURN_IF_ERROR(writes_.Prepare(G(o.kv_a_norm), Rkv, s));
  XT_RETURN_IF_ERROR(RmsnormBackward(dkv_c.get(), G(o.kv_a_norm), dkv_n.get(), a.kv_c.get(),
                                     P(o.kv_a_norm), a.kv_rstd.get(), T, Rkv, false, s));
  dkv_n = F();
  XT_RETURN_IF_ERROR(
      CopyColumns(dckv.get(), Rkv + dr, 0, dkv_c.get(), Rkv, 0, T, Rkv, ColumnOrder::kSame, 1, s));
  dkv_c = F();
  XT_RETURN_IF_ERROR(mm.LinearBackward(dh1, G(o.kv_a), dckv.get(), h1, P(o.kv_a), T, H, Rkv + dr,
                                       true, false, h1_16));
  return lora_.Backward(dh1, dckv.get(), nullptr, h1, h1_16, P, G, o, o.kv_a, T, H, Rkv + dr);
}

}  // namespace xt::cuda
