#include "xtuner/cuda/attention_block.h"

#include <cmath>

#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {

int64_t AttentionActs::Bytes() const {
  int64_t n = 0;
  for (const DeviceArray<float>* f : {&q_pre, &k_pre, &q_rstd, &k_rstd, &q, &k, &v, &attn, &lse,
                                      &qa, &qa_n, &qa_rstd, &kv_c, &kv_n, &kv_rstd})
    n += f->size() * int64_t(sizeof(float));
  for (const DeviceArray<uint16_t>* h : {&q16, &k16, &v16, &attn16})
    n += h->size() * int64_t(sizeof(uint16_t));
  return n;
}

AttentionBlock::AttentionBlock(const ModelConfig& cfg, StepProducts& mm, GradWrites& writes,
                               const Batch& batch, const float* cos, const float* sin,
                               const uint64_t* noise, bool bf16_attention,
                               AttentionBf16Kernels kernels, void* stream)
    : cfg_(cfg),
      mm_(mm),
      writes_(writes),
      batch_(batch),
      cos_(cos),
      sin_(sin),
      bf16_attention_(bf16_attention),
      kernels_(kernels),
      stream_(stream),
      lora_(cfg.lora, mm, noise, stream) {
  XT_CHECK(!bf16_attention || (!cfg.mla && !cfg.attention_sinks && cfg.num_sliding_layers() == 0),
           "AttentionBlock: the bf16 attention kernels take no latent attention, sinks or windows");
}

Status AttentionBlock::Forward(AttentionActs* a, DeviceArray<float>* out, const float* h1,
                               const uint16_t* h1_16, const UnitParams& P, int64_t l,
                               const LayerOffsets& o, const Mark& part) {
  if (cfg_.mla) return MlaForward(a, out, h1, h1_16, P, o, part);
  const int64_t T = batch_.num_tokens(), H = cfg_.hidden_size, D = cfg_.head_dim;
  const int64_t Hq = cfg_.num_heads, Hkv = cfg_.num_kv_heads;
  const float eps = float(cfg_.rms_norm_eps);
  const float scale = float(cfg_.softmax_scale());
  void* s = stream_;
  StepProducts& mm = mm_;
  XT_RETURN_IF_ERROR(a->q.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(a->k.Alloc(T * Hkv * D, s));
  XT_RETURN_IF_ERROR(a->v.Alloc(T * Hkv * D, s));
  XT_RETURN_IF_ERROR(part("qkv_proj"));
  if (cfg_.qk_norm) {
    XT_RETURN_IF_ERROR(a->q_pre.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(a->k_pre.Alloc(T * Hkv * D, s));
    XT_RETURN_IF_ERROR(a->q_rstd.Alloc(T * Hq, s));
    XT_RETURN_IF_ERROR(a->k_rstd.Alloc(T * Hkv, s));
    XT_RETURN_IF_ERROR(mm.Linear(a->q_pre.get(), h1, P(o.wq), T, H, Hq * D, false, h1_16));
    XT_RETURN_IF_ERROR(mm.Linear(a->k_pre.get(), h1, P(o.wk), T, H, Hkv * D, false, h1_16));
    XT_RETURN_IF_ERROR(AddBias(a->q_pre.get(), P, o.bq, Hq * D));
    XT_RETURN_IF_ERROR(AddBias(a->k_pre.get(), P, o.bk, Hkv * D));
    XT_RETURN_IF_ERROR(lora_.Forward(a->q_pre.get(), h1, h1_16, P, o, o.wq, T, H, Hq * D));
    XT_RETURN_IF_ERROR(lora_.Forward(a->k_pre.get(), h1, h1_16, P, o, o.wk, T, H, Hkv * D));
    XT_RETURN_IF_ERROR(part("qk_norm"));
    XT_RETURN_IF_ERROR(RmsnormForward(a->q.get(), a->q_rstd.get(), a->q_pre.get(), P(o.q_norm),
                                      T * Hq, D, eps, s));
    XT_RETURN_IF_ERROR(RmsnormForward(a->k.get(), a->k_rstd.get(), a->k_pre.get(), P(o.k_norm),
                                      T * Hkv, D, eps, s));
    XT_RETURN_IF_ERROR(part("qkv_proj"));
  } else {
    XT_RETURN_IF_ERROR(mm.Linear(a->q.get(), h1, P(o.wq), T, H, Hq * D, false, h1_16));
    XT_RETURN_IF_ERROR(mm.Linear(a->k.get(), h1, P(o.wk), T, H, Hkv * D, false, h1_16));
    XT_RETURN_IF_ERROR(AddBias(a->q.get(), P, o.bq, Hq * D));  // (GPT-OSS: before RoPE)
    XT_RETURN_IF_ERROR(AddBias(a->k.get(), P, o.bk, Hkv * D));
    XT_RETURN_IF_ERROR(lora_.Forward(a->q.get(), h1, h1_16, P, o, o.wq, T, H, Hq * D));
    XT_RETURN_IF_ERROR(lora_.Forward(a->k.get(), h1, h1_16, P, o, o.wk, T, H, Hkv * D));
  }
  XT_RETURN_IF_ERROR(mm.Linear(a->v.get(), h1, P(o.wv), T, H, Hkv * D, false, h1_16));
  XT_RETURN_IF_ERROR(AddBias(a->v.get(), P, o.bv, Hkv * D));
  XT_RETURN_IF_ERROR(lora_.Forward(a->v.get(), h1, h1_16, P, o, o.wv, T, H, Hkv * D));
  XT_RETURN_IF_ERROR(part("rope"));
  if (bf16_attention_) {
    // The bf16 kernels' inputs kept only as they read them: q and k rotated into bf16, v
    // rounded; the fp32 ones freed.
    XT_RETURN_IF_ERROR(a->q16.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(RopeForward(a->q16.get(), a->q.get(), cos_, sin_, T, Hq, D, s));
    a->q = DeviceArray<float>();
    XT_RETURN_IF_ERROR(a->k16.Alloc(T * Hkv * D, s));
    XT_RETURN_IF_ERROR(RopeForward(a->k16.get(), a->k.get(), cos_, sin_, T, Hkv, D, s));
    a->k = DeviceArray<float>();
    XT_RETURN_IF_ERROR(a->v16.Alloc(T * Hkv * D, s));
    XT_RETURN_IF_ERROR(ToBf16(a->v16.get(), a->v.get(), T * Hkv * D, s));
    a->v = DeviceArray<float>();
  } else {
    XT_RETURN_IF_ERROR(RopeForward(a->q.get(), cos_, sin_, T, Hq, D, s));
    XT_RETURN_IF_ERROR(RopeForward(a->k.get(), cos_, sin_, T, Hkv, D, s));
  }
  XT_RETURN_IF_ERROR(a->attn.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(a->lse.Alloc(T * Hq, s));
  XT_RETURN_IF_ERROR(part("attention_fwd"));
  const int32_t* cu = batch_.cu_seqlens.data();
  const int64_t docs = batch_.num_docs();
  XT_RETURN_IF_ERROR(
      bf16_attention_
          ? AttentionForwardFromBf16(a->attn.get(), a->lse.get(), a->q16.get(), a->k16.get(),
                                     a->v16.get(), cu, docs, T, Hq, Hkv, D, scale, s, kernels_)
          : AttentionForward(a->attn.get(), a->lse.get(), a->q.get(), a->k.get(), a->v.get(), cu,
                             docs, T, Hq, Hkv, D, scale, s, Extras(P, l, o)));
  if (bf16_attention_) {  // the output kept rounded, as o_proj's products read it
    XT_RETURN_IF_ERROR(a->attn16.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(ToBf16(a->attn16.get(), a->attn.get(), T * Hq * D, s));
    a->attn = DeviceArray<float>();
  }
  XT_RETURN_IF_ERROR(part("o_proj"));
  XT_RETURN_IF_ERROR(out->Alloc(T * H, s));
  XT_RETURN_IF_ERROR(
      mm.Linear(out->get(), a->attn.get(), P(o.wo), T, Hq * D, H, false, a->attn16.get()));
  XT_RETURN_IF_ERROR(AddBias(out->get(), P, o.bo, H));
  return lora_.Forward(out->get(), a->attn.get(), a->attn16.get(), P, o, o.wo, T, Hq * D, H);
}

Status AttentionBlock::AddBias(float* out, const UnitParams& P, int64_t b, int64_t n) {
  if (b < 0) return Status::OK();
  return BiasForward(out, P(b), batch_.num_tokens(), n, stream_);
}

Status AttentionBlock::BiasGrad(const UnitGrads& G, int64_t b, const float* dout, int64_t n) {
  float* db = G(b);
  if (!db) return Status::OK();
  XT_RETURN_IF_ERROR(writes_.Prepare(db, n, stream_));
  return BiasBackward(db, dout, batch_.num_tokens(), n, stream_);
}

ops::AttentionExtras AttentionBlock::Extras(const UnitParams& P, int64_t l,
                                            const LayerOffsets& o) const {
  ops::AttentionExtras x;
  x.sinks = P(o.sinks);
  x.window = cfg_.window(l);
  return x;
}

Status AttentionBlock::AllocGrads() {
  const int64_t T = batch_.num_tokens(), D = cfg_.head_dim;
  // (Multi-head latent attention: a key and a value per query head.)
  const int64_t Hq = cfg_.num_heads, Hkv = cfg_.mla ? Hq : cfg_.num_kv_heads;
  void* s = stream_;
  XT_RETURN_IF_ERROR(dattn_.Alloc(T * Hq * cfg_.value_dim(), s));
  XT_RETURN_IF_ERROR(dq_.Alloc(T * Hq * D, s));
  XT_RETURN_IF_ERROR(dk_.Alloc(T * Hkv * D, s));
  XT_RETURN_IF_ERROR(dv_.Alloc(T * Hkv * D, s));
  if (cfg_.qk_norm) {
    XT_RETURN_IF_ERROR(dq_pre_.Alloc(T * Hq * D, s));
    XT_RETURN_IF_ERROR(dk_pre_.Alloc(T * Hkv * D, s));
  }
  return Status::OK();
}

Status AttentionBlock::Backward(float* dh1, const float* dout, const AttentionActs& a,
                                const float* h1, const uint16_t* h1_16, const UnitParams& P,
                                const UnitGrads& G, int64_t l, const LayerOffsets& o,
                                const Mark& mark) {
  if (cfg_.mla) return MlaBackward(dh1, dout, a, h1, h1_16, P, G, o, mark);
  const int64_t T = batch_.num_tokens(), H = cfg_.hidden_size, D = cfg_.head_dim;
  const int64_t Hq = cfg_.num_heads, Hkv = cfg_.num_kv_heads;
  const float scale = float(cfg_.softmax_scale());
  void* s = stream_;
  StepProducts& mm = mm_;
  XT_RETURN_IF_ERROR(mark("o_proj_bwd"));
  XT_RETURN_IF_ERROR(mm.LinearBackward(dattn_.get(), G(o.wo), dout, a.attn.get(), P(o.wo), T,
                                       Hq * D, H, false, false, a.attn16.get()));
  XT_RETURN_IF_ERROR(BiasGrad(G, o.bo, dout, H));
  XT_RETURN_IF_ERROR(lora_.Backward(dattn_.get(), dout, nullptr, a.attn.get(), a.attn16.get(), P, G,
                                    o, o.wo, T, Hq * D, H));
  XT_RETURN_IF_ERROR(mark("attention_bwd"));
  float* dsinks = G(o.sinks);  // GPT-OSS: the sinks' gradient, added to
  if (dsinks) XT_RETURN_IF_ERROR(writes_.Prepare(dsinks, Hq, s));
  const int32_t* cu = batch_.cu_seqlens.data();
  const int64_t docs = batch_.num_docs();
  XT_RETURN_IF_ERROR(
      bf16_attention_
          ? AttentionBackwardFromBf16(dq_.get(), dk_.get(), dv_.get(), dattn_.get(), a.attn16.get(),
                                      a.lse.get(), a.q16.get(), a.k16.get(), a.v16.get(), cu, docs,
                                      T, Hq, Hkv, D, scale, s, kernels_)
          : AttentionBackward(dq_.get(), dk_.get(), dv_.get(), dattn_.get(), a.attn.get(),
                              a.lse.get(), a.q.get(), a.k.get(), a.v.get(), cu, docs, T, Hq, Hkv, D,
                              scale, s, Extras(P, l, o), dsinks));
  XT_RETURN_IF_ERROR(mark("rope_bwd"));
  XT_RETURN_IF_ERROR(RopeBackward(dq_.get(), cos_, sin_, T, Hq, D, s));
  XT_RETURN_IF_ERROR(RopeBackward(dk_.get(), cos_, sin_, T, Hkv, D, s));
  const float* dq_in = dq_.get();
  const float* dk_in = dk_.get();
  if (cfg_.qk_norm) {
    XT_RETURN_IF_ERROR(mark("qk_norm_bwd"));
    XT_RETURN_IF_ERROR(writes_.Prepare(G(o.q_norm), D, s));
    XT_RETURN_IF_ERROR(writes_.Prepare(G(o.k_norm), D, s));
    XT_RETURN_IF_ERROR(RmsnormBackward(dq_pre_.get(), G(o.q_norm), dq_.get(), a.q_pre.get(),
                                       P(o.q_norm), a.q_rstd.get(), T * Hq, D, false, s));
    XT_RETURN_IF_ERROR(RmsnormBackward(dk_pre_.get(), G(o.k_norm), dk_.get(), a.k_pre.get(),
                                       P(o.k_norm), a.k_rstd.get(), T * Hkv, D, false, s));
    dq_in = dq_pre_.get();
    dk_in = dk_pre_.get();
  }
  XT_RETURN_IF_ERROR(mark("qkv_proj_bwd"));
  XT_RETURN_IF_ERROR(BiasGrad(G, o.bq, dq_in, Hq * D));
  XT_RETURN_IF_ERROR(BiasGrad(G, o.bk, dk_in, Hkv * D));
  XT_RETURN_IF_ERROR(BiasGrad(G, o.bv, dv_.get(), Hkv * D));
  XT_RETURN_IF_ERROR(
      mm.LinearBackward(dh1, G(o.wq), dq_in, h1, P(o.wq), T, H, Hq * D, false, false, h1_16));
  XT_RETURN_IF_ERROR(lora_.Backward(dh1, dq_in, nullptr, h1, h1_16, P, G, o, o.wq, T, H, Hq * D));
  XT_RETURN_IF_ERROR(
      mm.LinearBackward(dh1, G(o.wk), dk_in, h1, P(o.wk), T, H, Hkv * D, true, false, h1_16));
  XT_RETURN_IF_ERROR(lora_.Backward(dh1, dk_in, nullptr, h1, h1_16, P, G, o, o.wk, T, H, Hkv * D));
  XT_RETURN_IF_ERROR(
      mm.LinearBackward(dh1, G(o.wv), dv_.get(), h1, P(o.wv), T, H, Hkv * D, true, false, h1_16));
  return lora_.Backward(dh1, dv_.get(), nullptr, h1, h1_16, P, G, o, o.wv, T, H, Hkv * D);
}

}  // namespace xt::cuda
