#include "xtuner/model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "xtuner/loss/balance.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/model/rope_tables.h"
#include "xtuner/model/swiglu_mlp.h"
#include "xtuner/model/transformer_acts.h"
#include "xtuner/ops/dropout_mask.h"
#include "xtuner/ops/ops.h"

namespace xt {

// The whole slabs held by the model: units are ranges of them, nothing to gather or fold.
class Transformer::LocalParams : public ParamSource {
 public:
  explicit LocalParams(Transformer* m) : m_(m) {}
  const float* Acquire(int64_t u) override {
    return m_->params_.f32() + m_->layout_.units()[u].begin;
  }
  void Release(int64_t) override {}
  float* Grads(int64_t u) override {  // what of the unit trains (param_source.h)
    return m_->grads_.f32() + m_->layout_.trainable(u).begin;
  }
  void GradsDone(int64_t) override {}
  bool Held(int64_t) const override { return true; }

 private:
  Transformer* m_;
};

Transformer::Transformer(ModelConfig cfg)
    : cfg_(std::move(cfg)),
      layout_(cfg_),
      params_(Tensor::Zeros(DType::F32, {layout_.total()})),
      grads_(Tensor::Zeros(DType::F32, {layout_.total()})),
      local_(std::make_unique<LocalParams>(this)),
      source_(local_.get()) {}

Transformer::Transformer(ModelConfig cfg, ParamSource* source, int64_t expert_begin,
                         int64_t expert_count, Comm* ep)
    : cfg_(std::move(cfg)), layout_(cfg_, expert_begin, expert_count), source_(source), ep_(ep) {
  XT_CHECK(source_ != nullptr, "Transformer: no parameter source");
  if (ep_ && ep_->size() == 1) ep_ = nullptr;
  if (ep_)
    XT_CHECK(cfg_.is_moe() && expert_count * ep_->size() == cfg_.num_experts &&
                 expert_begin == expert_count * ep_->rank(),
             "Transformer: the expert slice does not match the ep group");
}

Transformer::~Transformer() = default;

void Transformer::ZeroGrads() {
  if (grads_.numel() > 0) std::memset(grads_.data(), 0, grads_.nbytes());
}

UnitParams Transformer::Acquire(int64_t u) {
  return {source_->Acquire(u), layout_.units()[u].begin};
}

UnitGrads Transformer::Grads(int64_t u) {
  const ParamUnit& t = layout_.trainable(u);
  return {source_->Grads(u), t.begin, t.end};
}

Linear Transformer::Lin(int64_t l, const UnitParams& P, const UnitGrads* G, int64_t weight) const {
  Linear lin;
  lin.w = P(weight);
  lin.dw = G ? (*G)(weight) : nullptr;
  const LayerOffsets& o = layout_.layers[l];
  const int64_t bias = weight == o.wq   ? o.bq
                       : weight == o.wk ? o.bk
                       : weight == o.wv ? o.bv
                       : weight == o.wo ? o.bo
                                        : -1;
  if (bias >= 0) {
    lin.b = P(bias);
    lin.db = G ? (*G)(bias) : nullptr;
  }
  for (const LoraPiece& piece : layout_.layers[l].lora) {
    if (piece.base != weight) continue;
    LoraRef r;
    r.a = P(piece.a);
    r.b = P(piece.b);
    r.da = G ? (*G)(piece.a) : nullptr;
    r.db = G ? (*G)(piece.b) : nullptr;
    r.row0 = piece.row0;
    r.rows = piece.rows;
    r.rank = cfg_.lora.rank;
    r.scale = float(cfg_.lora.scale());
    if (noise_) {  // LoRA's dropout (a training pass)
      r.noise = noise_;
      r.salt = uint64_t(piece.id);
      r.threshold = ops::dropout_threshold(cfg_.lora.dropout);
      r.scale = float(cfg_.lora.dropout_scale());
    }
    lin.lora.push_back(r);
  }
  return lin;
}

void Transformer::SetRecompute(double fraction) {
  XT_CHECK(fraction >= 0 && fraction <= 1, "recompute fraction must be in [0, 1]");
  recompute_layers_ = int64_t(std::llround(fraction * double(cfg_.num_layers)));
}

void Transformer::ComputeRope(const Batch& b, Acts* a) const {
  ComputeRopeTables(b, cfg_, &a->cos, &a->sin);
}

// Grouped-query attention of layer l: a->attn (T, Hq * D) from a->h1 (q/k RMSNorm when the
// model has it, RoPE, causal attention within each document or over the cache).
void Transformer::GqaForward(int64_t l, const UnitParams& P, const Batch& b, Acts* acts,
                             LayerActs* a, KvCache* const* caches) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, D = cfg_.head_dim;
  const int64_t Hq = cfg_.num_heads, Hkv = cfg_.num_kv_heads;
  const float eps = float(cfg_.rms_norm_eps);
  a->q.resize(T * Hq * D);
  a->k.resize(T * Hkv * D);
  a->v.resize(T * Hkv * D);
  if (cfg_.qk_norm) {
    a->q_pre.resize(T * Hq * D);
    a->k_pre.resize(T * Hkv * D);
    a->q_rstd.resize(T * Hq);
    a->k_rstd.resize(T * Hkv);
    LinearForward(a->q_pre.data(), a->h1.data(), Lin(l, P, nullptr, o.wq), T, H, Hq * D);
    LinearForward(a->k_pre.data(), a->h1.data(), Lin(l, P, nullptr, o.wk), T, H, Hkv * D);
    ops::rmsnorm_forward(a->q.data(), a->q_rstd.data(), a->q_pre.data(), P(o.q_norm), T * Hq, D,
                         eps);
    ops::rmsnorm_forward(a->k.data(), a->k_rstd.data(), a->k_pre.data(), P(o.k_norm), T * Hkv, D,
                         eps);
  } else {
    LinearForward(a->q.data(), a->h1.data(), Lin(l, P, nullptr, o.wq), T, H, Hq * D);
    LinearForward(a->k.data(), a->h1.data(), Lin(l, P, nullptr, o.wk), T, H, Hkv * D);
  }
  LinearForward(a->v.data(), a->h1.data(), Lin(l, P, nullptr, o.wv), T, H, Hkv * D);
  ops::rope_forward(a->q.data(), acts->cos.data(), acts->sin.data(), T, Hq, D);
  ops::rope_forward(a->k.data(), acts->cos.data(), acts->sin.data(), T, Hkv, D);
  a->attn.resize(T * Hq * D);
  Attend(l, P, b, Hkv, a->attn.data(), a, caches);
}

ops::AttentionExtras Transformer::Extras(int64_t l, const UnitParams& P) const {
  ops::AttentionExtras x;
  x.sinks = P(layout_.layers[l].sinks);
  x.window = cfg_.window(l);
  return x;
}

void Transformer::Attend(int64_t l, const UnitParams& P, const Batch& b, int64_t Hkv, float* out,
                         LayerActs* a, KvCache* const* caches) {
  const int64_t T = b.num_tokens(), Hq = cfg_.num_heads, D = cfg_.head_dim;
  const float scale = float(cfg_.softmax_scale());
  if (caches) {
    for (int64_t s = 0; s < b.num_docs(); ++s) {  // document s: rows [t0, t0 + n)
      KvCache& c = *caches[s];
      const int64_t t0 = b.cu_seqlens[s], n = b.cu_seqlens[s + 1] - t0;
      std::copy_n(a->k.data() + t0 * Hkv * D, n * Hkv * D, c.k[l].data() + c.length * Hkv * D);
      std::copy_n(a->v.data() + t0 * Hkv * D, n * Hkv * D, c.v[l].data() + c.length * Hkv * D);
      ops::attention_cached_forward(out + t0 * Hq * D, a->q.data() + t0 * Hq * D, c.k[l].data(),
                                    c.v[l].data(), c.length, n, Hq, Hkv, D, scale, Extras(l, P));
    }
  } else {
    a->lse.resize(T * Hq);
    ops::attention_forward(out, a->lse.data(), a->q.data(), a->k.data(), a->v.data(),
                           b.cu_seqlens.data(), b.num_docs(), T, Hq, Hkv, D, scale, Extras(l, P));
  }
}

void Transformer::LayerForward(int64_t l, const UnitParams& P, const Batch& b, const float* x_in,
                               float* x_out, Acts* acts, KvCache* const* caches) {
  const LayerOffsets& o = layout_.layers[l];
  LayerActs& a = acts->layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads;
  const float eps = float(cfg_.rms_norm_eps);

  // ---- attention block
  a.x_in.assign(x_in, x_in + T * H);
  a.h1.resize(T * H);
  a.rstd1.resize(T);
  ops::rmsnorm_forward(a.h1.data(), a.rstd1.data(), x_in, P(o.ln1), T, H, eps);
  if (cfg_.mla) {
    MlaForward(l, P, b, acts, &a, caches);
  } else {
    GqaForward(l, P, b, acts, &a, caches);
  }
  const int64_t Dv = cfg_.value_dim();
  a.x_mid.resize(T * H);
  LinearForward(a.x_mid.data(), a.attn.data(), Lin(l, P, nullptr, o.wo), T, Hq * Dv, H);
  for (int64_t i = 0; i < T * H; ++i) a.x_mid[i] += x_in[i];

  // ---- feed-forward block
  a.h2.resize(T * H);
  a.rstd2.resize(T);
  ops::rmsnorm_forward(a.h2.data(), a.rstd2.data(), a.x_mid.data(), P(o.ln2), T, H, eps);
  if (o.router < 0) {  // dense SwiGLU MLP
    SwigluMlpForward(x_out, &a.gu, &a.act, a.h2.data(), Lin(l, P, nullptr, o.gate_up),
                     Lin(l, P, nullptr, o.down), T, H, cfg_.intermediate_size);
  } else {  // dropless MoE
    MoeForward(l, P, T, x_out, &a);
  }
  for (int64_t i = 0; i < T * H; ++i) x_out[i] += a.x_mid[i];
}

// dx (T, H): on entry d loss / d layer output; on return d loss / d layer input.
// dprob_e (E): the balancing loss gradient per probability (already scaled), or null.
void Transformer::LayerBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b,
                                float* dx, Acts* acts, const double* dprob_e) {
  const LayerOffsets& o = layout_.layers[l];
  LayerActs& a = acts->layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, Hq = cfg_.num_heads;

  // ---- feed-forward block: dx is also d x_mid through the residual.
  vector<float> dh2(T * H);
  if (o.router < 0) {
    SwigluMlpBackward(dh2.data(), dx, a.h2.data(), a.gu, a.act, Lin(l, P, &G, o.gate_up),
                      Lin(l, P, &G, o.down), T, H, cfg_.intermediate_size,
                      /*accumulate_dx=*/false);
  } else {
    MoeBackward(l, P, G, T, dx, dh2.data(), &a, dprob_e);
  }
  ops::rmsnorm_backward(dx, G(o.ln2), dh2.data(), a.x_mid.data(), P(o.ln2), a.rstd2.data(), T, H,
                        /*accumulate_din=*/true);  // dx = d x_mid now

  // ---- attention block: dx is also d x_in through the residual.
  const int64_t Dv = cfg_.value_dim();
  vector<float> dattn(T * Hq * Dv), dh1(T * H);
  LinearBackward(dattn.data(), dx, a.attn.data(), Lin(l, P, &G, o.wo), T, Hq * Dv, H);
  if (cfg_.mla) {
    MlaBackward(l, P, G, b, dattn.data(), dh1.data(), acts, &a);
  } else {
    GqaBackward(l, P, G, b, dattn.data(), dh1.data(), acts, &a);
  }
  ops::rmsnorm_backward(dx, G(o.ln1), dh1.data(), a.x_in.data(), P(o.ln1), a.rstd1.data(), T, H,
                        /*accumulate_din=*/true);
}

// dattn (T, Hq * D) -> dh1 (T, H) assigned.
void Transformer::GqaBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b,
                              const float* dattn, float* dh1, Acts* acts, LayerActs* a) {
  const LayerOffsets& o = layout_.layers[l];
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, D = cfg_.head_dim;
  const int64_t Hq = cfg_.num_heads, Hkv = cfg_.num_kv_heads;
  vector<float> dq(T * Hq * D), dk(T * Hkv * D), dv(T * Hkv * D);
  ops::attention_backward(dq.data(), dk.data(), dv.data(), dattn, a->attn.data(), a->lse.data(),
                          a->q.data(), a->k.data(), a->v.data(), b.cu_seqlens.data(), b.num_docs(),
                          T, Hq, Hkv, D, float(cfg_.softmax_scale()), Extras(l, P), G(o.sinks));
  ops::rope_backward(dq.data(), acts->cos.data(), acts->sin.data(), T, Hq, D);
  ops::rope_backward(dk.data(), acts->cos.data(), acts->sin.data(), T, Hkv, D);
  if (cfg_.qk_norm) {
    vector<float> dq_pre(T * Hq * D), dk_pre(T * Hkv * D);
    ops::rmsnorm_backward(dq_pre.data(), G(o.q_norm), dq.data(), a->q_pre.data(), P(o.q_norm),
                          a->q_rstd.data(), T * Hq, D);
    ops::rmsnorm_backward(dk_pre.data(), G(o.k_norm), dk.data(), a->k_pre.data(), P(o.k_norm),
                          a->k_rstd.data(), T * Hkv, D);
    dq.swap(dq_pre);
    dk.swap(dk_pre);
  }
  LinearBackward(dh1, dq.data(), a->h1.data(), Lin(l, P, &G, o.wq), T, H, Hq * D);
  LinearBackward(dh1, dk.data(), a->h1.data(), Lin(l, P, &G, o.wk), T, H, Hkv * D, true);
  LinearBackward(dh1, dv.data(), a->h1.data(), Lin(l, P, &G, o.wv), T, H, Hkv * D, true);
}

Result<LossInfo> Transformer::Run(const Batch& b, bool backward, double ce_weight,
                                  double aux_weight, ForwardOutputs* out, bool want_logits,
                                  bool want_hidden, const BalancePool* pool, bool layers_only) {
  XT_RETURN_IF_ERROR(b.Validate(cfg_.vocab_size));
  // LoRA's dropout drops in the training passes (the backward's, and its router statistics),
  // by the batch's noise keys.
  const bool drops = cfg_.lora.dropout > 0 && (backward || layers_only) && !b.noise.empty();
  noise_ = drops ? b.noise.data() : nullptr;
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, V = cfg_.vocab_size, L = cfg_.num_layers;
  const bool tied = cfg_.tie_word_embeddings;
  const int64_t head = layout_.head_unit();
  Acts acts;
  acts.layers.resize(L);
  ComputeRope(b, &acts);

  vector<float> x(T * H), y(T * H);
  {
    const UnitParams P = Acquire(0);
    ops::embedding_forward(x.data(), b.ids.data(), P(layout_.embed), T, H);
    source_->Release(0);
  }
  auto keep_hidden = [&](const vector<float>& h) {
    Tensor t = Tensor::Empty(DType::F32, {T, H});
    std::memcpy(t.f32(), h.data(), T * H * 4);
    out->hidden_states.push_back(t);
  };
  if (want_hidden) keep_hidden(x);

  LossInfo info;
  // Pooled balancing statistics over every MoE layer.
  const int64_t E = cfg_.num_experts, k = cfg_.top_k;
  const int64_t n_moe = cfg_.num_moe_layers();
  BalanceStats& stats = info.balance;
  if (n_moe > 0) {
    stats.count.assign(E, 0.0);
    stats.prob_sum.assign(E, 0.0);
    stats.rows = n_moe * T;
  }
  const int64_t last_layer = layers_only ? std::min(L, cfg_.last_moe_layer() + 1) : L;
  vector<int64_t> held(L), full(L);  // per layer: bytes kept for the backward; bytes when whole
  for (int64_t l = 0; l < last_layer; ++l) {
    LayerForward(l, Acquire(ParamLayout::LayerUnit(l)), b, x.data(), y.data(), &acts);
    source_->Release(ParamLayout::LayerUnit(l));
    x.swap(y);
    LayerActs& a = acts.layers[l];
    if (!a.probs.empty()) {
      ops::moe_balance_stats(stats.count.data(), stats.prob_sum.data(), a.probs.data(),
                             a.topk_idx.data(), T, E, k);
      vector<int64_t> per_expert(E, 0);
      for (int32_t e : a.topk_idx) ++per_expert[e];
      info.tokens_per_expert.push_back(std::move(per_expert));
      if (out) {
        Tensor rl = Tensor::Empty(DType::F32, {T, E});
        std::memcpy(rl.f32(), a.router_logits.data(), T * E * 4);
        out->router_logits.push_back(rl);
        Tensor ti = Tensor::Empty(DType::I32, {T, k});
        std::memcpy(ti.i32(), a.topk_idx.data(), T * k * 4);
        out->topk_idx.push_back(ti);
      }
    }
    if (want_hidden && l + 1 < L) keep_hidden(x);
    full[l] = a.bytes();
    if (backward && l < recompute_layers_) {
      // Keep only the layer's input; the backward runs the layer again from it.
      LayerActs input_only;
      input_only.x_in = std::move(a.x_in);
      a = std::move(input_only);
    }
    if (!backward) a = LayerActs();  // nothing to keep
    held[l] = a.bytes();
  }
  // The balancing loss is transformers' softmax-router loss; DeepSeek-V3 has none (its bias
  // balances the load), so its statistics only count the choices.
  if (n_moe > 0 && cfg_.router == RouterKind::kSoftmax) info.aux_loss = stats.Loss();
  if (layers_only) return info;
  // The head: final norm and lm_head (the embedding's unit when tied), forward and backward.
  const UnitParams P = Acquire(head);
  const UnitParams P_lm = tied ? Acquire(0) : P;
  acts.x_final = x;
  acts.h_final.resize(T * H);
  acts.rstd_final.resize(T);
  ops::rmsnorm_forward(acts.h_final.data(), acts.rstd_final.data(), x.data(), P(layout_.final_norm),
                       T, H, float(cfg_.rms_norm_eps));
  if (want_hidden) keep_hidden(acts.h_final);
  if (want_logits) {
    out->logits = Tensor::Empty(DType::F32, {T, V});
    lm_head_logits(out->logits.f32(), acts.h_final.data(), P_lm(layout_.lm_head), T, H, V);
  }

  info.num_loss_tokens = b.num_loss_tokens();
  if (ce_weight <= 0) ce_weight = info.num_loss_tokens > 0 ? 1.0 / double(info.num_loss_tokens) : 0;
  if (aux_weight < 0) aux_weight = 1.0;
  vector<double> dprob_e(E, 0.0);
  if (n_moe > 0 && backward && cfg_.router == RouterKind::kSoftmax) {
    // The statistics the balancing gradient follows: this batch's, or what the pool returns.
    BalanceStats pooled = pool && *pool ? (*pool)(stats) : stats;
    XT_CHECK(int64_t(pooled.count.size()) == E && int64_t(pooled.prob_sum.size()) == E,
             "balance pool returned statistics of a different expert count");
    dprob_e = BalanceGradient(pooled, E, cfg_.router_aux_loss_coef, aux_weight);
  }

  // With tied embeddings the lm_head gradient goes to the embedding's unit, which stays open
  // until the embedding's own backward at the end.
  UnitGrads G, G_lm;
  if (backward) {
    G = Grads(head);
    G_lm = tied ? Grads(0) : G;
  }
  vector<float> dh(backward ? T * H : 0);
  const double ce_sum = chunked_cross_entropy(
      backward ? dh.data() : nullptr, backward ? G_lm(layout_.lm_head) : nullptr,
      acts.h_final.data(), P_lm(layout_.lm_head), b.targets.data(), T, H, V, ce_weight);
  info.ce_loss = info.num_loss_tokens > 0 ? ce_sum / double(info.num_loss_tokens) : 0;
  info.loss = info.ce_loss + cfg_.router_aux_loss_coef * info.aux_loss;
  vector<float> dx(backward ? T * H : 0);
  if (backward)
    ops::rmsnorm_backward(dx.data(), G(layout_.final_norm), dh.data(), acts.x_final.data(),
                          P(layout_.final_norm), acts.rstd_final.data(), T, H);
  source_->Release(head);
  if (tied) source_->Release(0);
  if (!backward) return info;
  source_->GradsDone(head);
  const bool aux_grad = n_moe > 0 && cfg_.router == RouterKind::kSoftmax &&
                        cfg_.router_aux_loss_coef * aux_weight != 0;
  // The backward walks down the layers, freeing each after its backward and rebuilding a
  // recomputed one first: at layer l, layers below hold what they kept and l holds all of it.
  for (int64_t l = 0, below = 0; l < L; below += held[l], ++l)
    info.activation_bytes = std::max(info.activation_bytes, below + full[l]);
  for (int64_t l = L - 1; l >= 0; --l) {
    const int64_t u = ParamLayout::LayerUnit(l);
    const UnitParams Pl = Acquire(u);
    if (l < recompute_layers_) {  // the same inputs give bit-identical activations
      vector<float> x_in = std::move(acts.layers[l].x_in), unused(T * H);
      LayerForward(l, Pl, b, x_in.data(), unused.data(), &acts);
    }
    LayerBackward(l, Pl, Grads(u), b, dx.data(), &acts, aux_grad ? dprob_e.data() : nullptr);
    source_->Release(u);
    source_->GradsDone(u);
    acts.layers[l] = LayerActs();  // free as we go
  }
  const UnitGrads G_embed = Grads(0);
  if (float* d_embed = G_embed(layout_.embed))  // null when frozen (LoRA)
    ops::embedding_backward(d_embed, dx.data(), b.ids.data(), T, V, H);
  source_->GradsDone(0);
  return info;
}

KvCache Transformer::NewKvCache(int64_t capacity) const {
  KvCache c;
  c.capacity = capacity;
  const size_t n = size_t(KvCacheLayerFloats(cfg_, capacity));
  c.k.assign(cfg_.num_layers, vector<float>(n));
  c.v.assign(cfg_.num_layers, vector<float>(n));
  return c;
}

Result<vector<float>> Transformer::ForwardCached(const vector<int32_t>& ids, KvCache* cache) {
  XT_ASSIGN_OR_RETURN(vector<vector<float>> logits, ForwardCachedMany({ids}, {cache}));
  return std::move(logits[0]);
}

Result<vector<vector<float>>> Transformer::ForwardCachedMany(const vector<vector<int32_t>>& ids,
                                                             const vector<KvCache*>& caches) {
  const int64_t S = int64_t(ids.size()), H = cfg_.hidden_size, V = cfg_.vocab_size;
  if (S == 0 || caches.size() != ids.size())
    return Status::Error("generate: " + std::to_string(S) + " sequences and " +
                         std::to_string(caches.size()) + " caches (one each, at least one)");
  Batch b;  // sequence s: document s, at positions after its cache's
  b.cu_seqlens = {0};
  // "generate: [sequence s: ]what", the sequence named where there are several.
  auto error = [&](int64_t s, const std::string& what) {
    return Status::Error("generate: " + (S > 1 ? "sequence " + std::to_string(s) + ": " : "") +
                         what);
  };
  for (int64_t s = 0; s < S; ++s) {
    if (!caches[s]) return error(s, "no KV cache");
    if (std::find(caches.begin(), caches.begin() + s, caches[s]) != caches.begin() + s)
      return error(s, "its KV cache is an earlier sequence's");
    const int64_t n = int64_t(ids[s].size()), past = caches[s]->length;
    if (n == 0) return error(s, "no tokens to run");
    if (past + n > caches[s]->capacity)
      return error(s, std::to_string(past + n) + " positions exceed the KV cache of " +
                          std::to_string(caches[s]->capacity));
    b.ids.insert(b.ids.end(), ids[s].begin(), ids[s].end());
    for (int64_t t = 0; t < n; ++t) b.positions.push_back(int32_t(past + t));
    b.cu_seqlens.push_back(int32_t(b.ids.size()));
  }
  const int64_t T = b.num_tokens();
  b.targets.assign(T, kIgnoreIndex);
  XT_RETURN_IF_ERROR(b.Validate(V));
  noise_ = nullptr;  // no dropout in generation
  Acts acts;
  acts.layers.resize(cfg_.num_layers);
  ComputeRope(b, &acts);
  vector<float> x(T * H), y(T * H);
  {
    const UnitParams P = Acquire(0);
    ops::embedding_forward(x.data(), b.ids.data(), P(layout_.embed), T, H);
    source_->Release(0);
  }
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    LayerForward(l, Acquire(ParamLayout::LayerUnit(l)), b, x.data(), y.data(), &acts,
                 caches.data());
    source_->Release(ParamLayout::LayerUnit(l));
    acts.layers[l] = LayerActs();
    x.swap(y);
  }
  vector<float> last(S * H), h(S * H), rstd(S), logits(S * V);
  for (int64_t s = 0; s < S; ++s) {
    caches[s]->length += b.cu_seqlens[s + 1] - b.cu_seqlens[s];
    std::copy_n(x.data() + (b.cu_seqlens[s + 1] - 1) * H, H, last.data() + s * H);
  }
  const bool tied = cfg_.tie_word_embeddings;
  const UnitParams P = Acquire(layout_.head_unit());
  const UnitParams P_lm = tied ? Acquire(0) : P;
  ops::rmsnorm_forward(h.data(), rstd.data(), last.data(), P(layout_.final_norm), S, H,
                       float(cfg_.rms_norm_eps));
  lm_head_logits(logits.data(), h.data(), P_lm(layout_.lm_head), S, H, V);
  source_->Release(layout_.head_unit());
  if (tied) source_->Release(0);
  vector<vector<float>> out(S);
  for (int64_t s = 0; s < S; ++s)
    out[s].assign(logits.begin() + s * V, logits.begin() + (s + 1) * V);
  return out;
}

Result<LossInfo> Transformer::ForwardBackward(const Batch& b, double ce_weight, double aux_weight,
                                              const BalancePool& pool) {
  return Run(b, true, ce_weight, aux_weight, nullptr, false, false, &pool);
}

Result<BalanceStats> Transformer::RouterStats(const Batch& b) {
  XT_ASSIGN_OR_RETURN(LossInfo info, Run(b, false, -1, -1, nullptr, false, false, nullptr, true));
  return std::move(info.balance);
}

Result<ForwardOutputs> Transformer::Forward(const Batch& b, bool want_logits, bool want_hidden) {
  ForwardOutputs out;
  XT_ASSIGN_OR_RETURN(out.loss, Run(b, false, -1, -1, &out, want_logits, want_hidden));
  return out;
}

}  // namespace xt
