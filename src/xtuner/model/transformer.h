// Transformer: the decoder-only language models (Qwen3, Qwen3-MoE, Mixtral, DeepSeek-V3,
// GPT-OSS) on the op layer.
// Parameters and gradients are two fp32 slabs laid out by ParamLayout: held by the model, or
// served unit by unit by a ParamSource (ZeRO-3). One decoder layer:
//   x -> RMSNorm -> attention (GQA, optional per-head q/k RMSNorm, RoPE, causal within each
//   packed document, with GPT-OSS's biases, sinks and sliding windows; or DeepSeek-V3's
//   multi-head latent attention) -> + x -> RMSNorm -> MLP or dropless MoE (with shared experts
//   where the model has them) -> + residual.
// Not thread-safe: one Transformer runs one batch at a time (its kernels use all threads).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "xtuner/core/tensor.h"
#include "xtuner/loss/balance.h"
#include "xtuner/model/batch.h"
#include "xtuner/model/config.h"
#include "xtuner/model/linear.h"
#include "xtuner/model/param_source.h"
#include "xtuner/model/params.h"
#include "xtuner/ops/ops.h"

namespace xt {

class Comm;

struct LossInfo {
  double loss = 0;      // ce_loss + router_aux_loss_coef * aux_loss
  double ce_loss = 0;   // mean over the batch's loss tokens
  double aux_loss = 0;  // transformers' load-balancing loss (MoE), 0 for dense models
  int64_t num_loss_tokens = 0;
  std::vector<std::vector<int64_t>> tokens_per_expert;  // per MoE layer (E): top-k selections
  BalanceStats balance;  // this batch's pooled balancing statistics (aux_loss is their loss)
  int64_t activation_bytes = 0;  // peak bytes of activations kept for the backward
};

// What a forward pass can hand back for inspection.
struct ForwardOutputs {
  Tensor logits;                      // (T, V), only when asked for
  std::vector<Tensor> hidden_states;  // L + 1 of (T, H): embeddings, layer outputs, final norm
  std::vector<Tensor> router_logits;  // per MoE layer (T, E)
  std::vector<Tensor> topk_idx;       // per MoE layer (T, k), I32
  LossInfo loss;
};

// Keys and values of the positions generated so far, per layer (after RoPE), for generation.
struct KvCache {
  int64_t length = 0;                    // positions held
  int64_t capacity = 0;                  // positions it can hold
  std::vector<std::vector<float>> k, v;  // per layer: (capacity, Hkv, D)
};

// The floats of one layer's keys (or values) in a KvCache of `capacity` positions: capacity Hkv D.
inline int64_t KvCacheLayerFloats(const ModelConfig& cfg, int64_t capacity) {
  return capacity * cfg.num_kv_heads * cfg.head_dim;
}

// Called between a micro-batch's forward and its backward with the micro-batch's own balancing
// statistics; returns the statistics whose balancing loss the backward differentiates. Returning
// those of the whole global batch (summed over micro-batches and ranks) makes the balancing loss
// global: its gradient at every router row is E * count_e / N^2 of the global batch.
using BalancePool = std::function<BalanceStats(const BalanceStats& local)>;

class Transformer {
 public:
  // A model that holds its whole slabs; parameters are zero until loaded (model/checkpoint.h).
  explicit Transformer(ModelConfig cfg);
  // A model whose parameters and gradients live in `source` (not owned; it outlives the model),
  // which serves the units of ParamLayout(cfg, expert_begin, expert_count). Under expert
  // parallelism `ep` is the group of ranks that hold the other experts, in order (rank r holds
  // experts [r * expert_count, (r + 1) * expert_count)); null or one rank: no exchange.
  Transformer(ModelConfig cfg, ParamSource* source, int64_t expert_begin, int64_t expert_count,
              Comm* ep);
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  // The slabs (layout().total()): only for a model that holds them (empty otherwise).
  Tensor& params() { return params_; }
  const Tensor& params() const { return params_; }
  Tensor& grads() { return grads_; }
  void ZeroGrads();
  // Per-layer activation recompute: the first round(fraction * layers) layers keep only their
  // input in the forward and run again in the backward. Gradients are bit-identical either way.
  void SetRecompute(double fraction);
  int64_t recompute_layers() const { return recompute_layers_; }

  // Forward and backward of one micro-batch: gradients ACCUMULATE into grads().
  // The CE loss of each token is weighted by ce_weight (1 / loss tokens of the global batch;
  // <= 0 means 1 / this batch's loss tokens) and the balancing loss by aux_weight * coef
  // (aux_weight < 0 means 1). Returns the losses of this micro-batch (ce as a mean over its
  // own loss tokens). Errors only on invalid input. Without `pool` the balancing loss is the
  // micro-batch's own (transformers' definition); with it, that of the statistics it returns.
  Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight = -1,
                                   double aux_weight = -1, const BalancePool& pool = {});

  // The balancing statistics of a batch: the forward through the decoder layers only, nothing
  // kept (empty for a dense model). They equal ForwardBackward's for the same parameters. Under
  // ZeRO-3 and expert parallelism this is collective, like the forward.
  Result<BalanceStats> RouterStats(const Batch& batch);

  // Forward only, keeping what `out` asks for (logits are the full (T, V): inspection only).
  Result<ForwardOutputs> Forward(const Batch& batch, bool want_logits, bool want_hidden);

  // Generation: an empty cache for up to `capacity` positions.
  KvCache NewKvCache(int64_t capacity) const;
  // Runs `ids` at positions [cache->length, cache->length + n), appends their keys and values to
  // the cache and returns the logits (V) of the last one. Error if the cache would overflow or an
  // id is outside the vocabulary.
  Result<std::vector<float>> ForwardCached(const std::vector<int32_t>& ids, KvCache* cache);
  // Several sequences at once, each over its own cache: sequence s runs ids[s] as
  // ForwardCached(ids[s], caches[s]) would and the s-th logits (V) are its last token's. Each
  // unit is acquired once for all of them, so under ZeRO-3 and expert parallelism the call is
  // collective, like the forward: every rank calls it, each with its own sequences (at least
  // one). Errors as ForwardCached's, naming the sequence, before anything runs.
  Result<std::vector<std::vector<float>>> ForwardCachedMany(
      const std::vector<std::vector<int32_t>>& ids, const std::vector<KvCache*>& caches);

 private:
  struct Acts;
  struct LayerActs;
  class LocalParams;
  // Unit u's parameters (gradients) addressed by slab offsets of the layout.
  UnitParams Acquire(int64_t unit);
  UnitGrads Grads(int64_t unit);
  // The linear layer of layer l whose weight is at offset `weight`: the weight, its gradient
  // (null without G or when frozen) and its LoRA adapters (their gradients null without G).
  Linear Lin(int64_t l, const UnitParams& P, const UnitGrads* G, int64_t weight) const;

  void ComputeRope(const Batch& b, Acts* a) const;
  // With caches (generation: one per document of b), the layer appends each document's keys
  // and values to its cache and attends over it.
  void LayerForward(int64_t l, const UnitParams& P, const Batch& b, const float* x_in, float* x_out,
                    Acts* a, KvCache* const* caches = nullptr);
  void LayerBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b, float* dx,
                     Acts* a, const double* dprob_e);
  // Grouped-query attention of layer l: a->attn (T, Hq * D) from a->h1; its backward assigns
  // dh1 (T, H) from dattn.
  void GqaForward(int64_t l, const UnitParams& P, const Batch& b, Acts* acts, LayerActs* a,
                  KvCache* const* caches);
  void GqaBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b,
                   const float* dattn, float* dh1, Acts* acts, LayerActs* a);
  // out (T, Hq, D) = attention of a->q over a->k, a->v (Hkv heads of D): causal within each
  // document (a->lse kept for the backward), or each document over its cache after appending
  // its rows of a->k, a->v.
  void Attend(int64_t l, const UnitParams& P, const Batch& b, int64_t Hkv, float* out, LayerActs* a,
              KvCache* const* caches);
  // Layer l's attention sinks and sliding window (GPT-OSS; none for the other models).
  ops::AttentionExtras Extras(int64_t l, const UnitParams& P) const;
  // Multi-head latent attention of layer l: a->attn (T, Hq * v_head_dim) from a->h1; its
  // backward assigns dh1 (T, H) from dattn.
  void MlaForward(int64_t l, const UnitParams& P, const Batch& b, Acts* acts, LayerActs* a,
                  KvCache* const* caches);
  void MlaBackward(int64_t l, const UnitParams& P, const UnitGrads& G, const Batch& b,
                   const float* dattn, float* dh1, Acts* acts, LayerActs* a);
  // The MoE block of layer l: y (T, H) from h2 (T, H); its backward adds into dh2.
  void MoeForward(int64_t l, const UnitParams& P, int64_t T, float* y, LayerActs* a);
  void MoeBackward(int64_t l, const UnitParams& P, const UnitGrads& G, int64_t T, const float* dy,
                   float* dh2, LayerActs* a, const double* dprob_e);
  // layers_only: stop after the decoder layers (RouterStats).
  Result<LossInfo> Run(const Batch& b, bool backward, double ce_weight, double aux_weight,
                       ForwardOutputs* out, bool want_logits, bool want_hidden,
                       const BalancePool* pool = nullptr, bool layers_only = false);

  ModelConfig cfg_;
  ParamLayout layout_;
  Tensor params_;  // (layout_.total()) when held
  Tensor grads_;   // (layout_.total()) when held
  std::unique_ptr<LocalParams> local_;
  ParamSource* source_ = nullptr;
  Comm* ep_ = nullptr;
  int64_t recompute_layers_ = 0;
  const uint64_t* noise_ = nullptr;  // the running batch's noise keys where LoRA's dropout drops
};

}  // namespace xt
