// Transformer: the decoder-only language models (Qwen3, Qwen3-MoE, Mixtral) on the op layer.
// Parameters and gradients are two fp32 slabs laid out by ParamLayout. One decoder layer:
//   x -> RMSNorm -> attention (GQA, optional per-head q/k RMSNorm, RoPE, causal within each
//   packed document) -> + x -> RMSNorm -> MLP or dropless MoE -> + residual.
// Not thread-safe: one Transformer runs one batch at a time (its kernels use all threads).
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/core/tensor.h"
#include "xtuner/model/batch.h"
#include "xtuner/model/config.h"
#include "xtuner/model/params.h"

namespace xt {

struct LossInfo {
  double loss = 0;      // ce_loss + router_aux_loss_coef * aux_loss
  double ce_loss = 0;   // mean over the batch's loss tokens
  double aux_loss = 0;  // transformers' load-balancing loss (MoE), 0 for dense models
  int64_t num_loss_tokens = 0;
  std::vector<std::vector<int64_t>> tokens_per_expert;  // per MoE layer (E): top-k selections
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

class Transformer {
 public:
  // Parameters are zero until loaded (see model/checkpoint.h).
  explicit Transformer(ModelConfig cfg);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
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
  // own loss tokens). Errors only on invalid input.
  Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight = -1,
                                   double aux_weight = -1);

  // Forward only, keeping what `out` asks for (logits are the full (T, V): inspection only).
  Result<ForwardOutputs> Forward(const Batch& batch, bool want_logits, bool want_hidden);

  // Generation: an empty cache for up to `capacity` positions.
  KvCache NewKvCache(int64_t capacity) const;
  // Runs `ids` at positions [cache->length, cache->length + n), appends their keys and values to
  // the cache and returns the logits (V) of the last one. Error if the cache would overflow or an
  // id is outside the vocabulary.
  Result<std::vector<float>> ForwardCached(const std::vector<int32_t>& ids, KvCache* cache);

 private:
  struct Acts;
  struct LayerActs;
  void ComputeRope(const Batch& b, Acts* a) const;
  // With a cache (generation), the layer appends its keys and values and attends over them.
  void LayerForward(int64_t l, const Batch& b, const float* x_in, float* x_out, Acts* a,
                    KvCache* cache = nullptr);
  void LayerBackward(int64_t l, const Batch& b, float* dx, Acts* a, const double* dprob_e);
  Result<LossInfo> Run(const Batch& b, bool backward, double ce_weight, double aux_weight,
                       ForwardOutputs* out, bool want_logits, bool want_hidden);

  ModelConfig cfg_;
  ParamLayout layout_;
  Tensor params_;  // (layout_.total())
  Tensor grads_;   // (layout_.total())
  int64_t recompute_layers_ = 0;
};

}  // namespace xt
