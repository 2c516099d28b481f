// ModelConfig: the architecture hyper-parameters read from a Hugging Face config.json.
// Accepts both the transformers-4 spellings found on the hub (num_experts, top-level rope_theta,
// rope_scaling) and the transformers-5 ones (num_local_experts, rope_parameters). Anything this
// engine does not implement (an unknown model_type, a rope scaling type, attention biases, a
// sliding window...) is an error that says what is supported, never silently ignored.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

enum class Arch { kQwen3, kQwen3Moe, kMixtral };

struct ModelConfig {
  std::string model_type;  // "qwen3" | "qwen3_moe" | "mixtral"
  Arch arch = Arch::kQwen3;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;  // dense MLP layers
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool qk_norm = false;  // Qwen3: RMSNorm over head_dim on q and k, before RoPE

  // MoE (num_experts == 0 for dense models).
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  double router_aux_loss_coef = 0.0;
  std::vector<bool> layer_is_moe;  // (num_layers)

  bool is_moe() const { return num_experts > 0; }
  int64_t num_moe_layers() const;
  int64_t last_moe_layer() const;  // -1 for a dense model

  // Parses a config.json object; `source` (the file path) prefixes every error.
  static Result<ModelConfig> FromJson(const nlohmann::json& j, const std::string& source);
  // Reads DIR/config.json (or the given .json file).
  static Result<ModelConfig> Load(const std::string& dir_or_file);
  // A transformers-5 style config.json for this model (used by HF export).
  nlohmann::json ToJson() const;
};

}  // namespace xt
