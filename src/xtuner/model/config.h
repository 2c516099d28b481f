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

enum class Arch { kQwen3, kQwen3Moe, kMixtral, kDeepseekV3, kGptOss };

// How a MoE router turns its logits into expert choices and weights.
enum class RouterKind {
  kSoftmax,       // Qwen3-MoE, Mixtral: softmax, top-k, optional renormalisation
  kSigmoidGroup,  // DeepSeek-V3: sigmoid, + correction bias for the choice, group-limited top-k
};

// The experts' activation over their fused [gate | up] product.
enum class ExpertActivation {
  kSwiglu,  // silu(gate) * up
  // GPT-OSS: gate' = min(gate, limit), up' = clamp(up, -limit, limit),
  // out = (up' + 1) * gate' * sigmoid(alpha * gate') (transformers' GptOssExperts._apply_gate).
  kGptOssGlu,
};

// RoPE scaling (rope_parameters / rope_scaling): none, or YaRN as transformers computes it
// (_compute_yarn_parameters: the frequencies blended between interpolation by `factor` and
// extrapolation over a ramp set by beta_fast / beta_slow, cos and sin times attention_factor).
struct RopeScaling {
  bool yarn = false;
  double factor = 1.0;
  double attention_factor = 1.0;  // derived from factor, mscale, mscale_all_dim when not given
  double beta_fast = 32.0, beta_slow = 1.0;
  int64_t original_max_position_embeddings = 0;
  bool truncate = true;
  double mscale_all_dim = 0;  // DeepSeek-V3: the softmax scale also times mscale(factor, this)^2
};

// LoRA adapters (Hu et al. 2021) as PEFT adds them, when rank > 0: each targeted linear layer
// keeps its weight W (out, in) frozen and gains a trainable low-rank update,
//   y = x W^T + scale * (x A^T) B^T,   A (rank, in), B (out, rank),
// with scale = alpha / rank (alpha / sqrt(rank) when rslora). Every other parameter is frozen.
// Not part of config.json: a training run sets it from its [lora] table (model/lora.h).
struct LoraSpec {
  int64_t rank = 0;
  double alpha = 0;
  bool rslora = false;
  // PEFT module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; under
  // MLA q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj): every linear layer whose name ends
  // with one is adapted. Checked and expanded by ResolveLora (model/lora.h).
  std::vector<std::string> targets;
  // PEFT's target_parameters on the routed experts' stacked weights: "mlp.experts.gate_up_proj"
  // (E, 2I, H) and/or "mlp.experts.down_proj" (E, H, I) of every MoE layer, or
  // "<l>.mlp.experts.gate_up_proj" ... of layer l alone; one adapter of rank `rank` per expert,
  // as PEFT's ParamWrapper adds. Empty: the experts take none. ResolveLora takes PEFT's other
  // spellings ("gate_up_proj", "layers.7.mlp.experts.down_proj") and orders them (every layer's
  // first); its result resolves to itself.
  std::vector<std::string> expert_targets;
  // PEFT's lora_dropout: the probability, in [0, 1), that an element of an adapter's input is
  // dropped in training (Batch::noise draws the masks). A training setting, not part of the
  // layout: LoraSpecToJson leaves it out.
  double dropout = 0;
  bool enabled() const { return rank > 0; }
  double scale() const;
  // The adapters' scale in a pass that drops: scale() / (1 - dropout). The dropout's 1 / (1 - p)
  // goes with the scale, so that the masked input is the input's own values (exact in bf16 too).
  double dropout_scale() const { return scale() / (1.0 - dropout); }
  bool Targets(const std::string& module) const;
  // Whether layer l's experts' `param` ("gate_up_proj" or "down_proj") takes adapters.
  bool TargetsExperts(int64_t layer, const std::string& param) const;
};

struct ModelConfig {
  std::string model_type;  // "qwen3" | "qwen3_moe" | "mixtral" | "deepseek_v3" | "gpt_oss"
  Arch arch = Arch::kQwen3;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;           // MLA: qk_nope_head_dim + qk_rope_head_dim (the query/key width)
  int64_t intermediate_size = 0;  // dense MLP layers
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qk_norm = false;  // Qwen3: RMSNorm over head_dim on q and k, before RoPE
  // GPT-OSS's attention: biases on q/k/v/o_proj; a learned sink logit per query head in every
  // softmax's denominator (self_attn.sinks, ops::AttentionExtras); a sliding window of
  // sliding_window keys on the layers where layer_sliding[l] (layer_types "sliding_attention").
  bool attention_bias = false;
  bool attention_sinks = false;
  int64_t sliding_window = 0;
  std::vector<bool> layer_sliding;  // (num_layers); empty: no layer slides

  // MoE (num_experts == 0 for dense models).
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  double router_aux_loss_coef = 0.0;
  std::vector<bool> layer_is_moe;  // (num_layers)
  RouterKind router = RouterKind::kSoftmax;
  // DeepSeek-V3's router: experts form n_group groups; a token picks its topk_group best groups
  // (each scored by the sum of its two best biased scores), then its top_k experts among them;
  // the chosen weights (renormalised when norm_topk_prob) are scaled by routed_scaling_factor.
  int64_t n_group = 1, topk_group = 1;
  double routed_scaling_factor = 1.0;
  int64_t n_shared_experts = 0;  // a shared SwiGLU MLP of n * moe_intermediate_size per MoE layer
  // GPT-OSS's MoE: a trainable bias on the router's logits (mlp.router.bias), biases on the
  // experts' gate_up and down products, and its clamped GLU (alpha 1.702, limit 7.0, as
  // transformers hard-codes them; a config.json swiglu_limit must be 7).
  bool router_logit_bias = false;
  bool expert_bias = false;
  ExpertActivation expert_act = ExpertActivation::kSwiglu;
  double glu_alpha = 1.702, glu_limit = 7.0;

  // Multi-head latent attention (DeepSeek-V3), when mla: q = q_b(norm(q_a(x))) (or q_proj(x)
  // when q_lora_rank is 0); [c_kv | k_rope] = kv_a(x); [k_nope | v] per head = kv_b(norm(c_kv));
  // k_rope (one per token) is shared by all heads. RoPE covers the last qk_rope_head_dim of each
  // query and key head, on interleaved pairs when rope_interleave.
  bool mla = false;
  int64_t q_lora_rank = 0, kv_lora_rank = 0;
  // The eps of q_a_layernorm and kv_a_layernorm: RMSNorm's default whatever rms_norm_eps says
  // (so do transformers and DeepSeek's own code).
  static constexpr float kLatentNormEps = 1e-6f;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  bool rope_interleave = true;
  int64_t num_nextn_predict_layers = 0;  // multi-token-prediction layers in the checkpoint (unused)

  // A block-quantized FP8 checkpoint (quantization_config {"quant_method": "fp8", ...}, as in
  // DeepSeek-V3's and Qwen3's "-FP8" releases): its F8_E4M3 weights carry one scale per block of
  // fp8_block[0] rows x fp8_block[1] columns and are dequantized to fp32 on load
  // (model/fp8_weights.h). Training and export are in fp32 / bf16 from then on.
  bool fp8_weights = false;
  int64_t fp8_block[2] = {0, 0};
  // GPT-OSS's hub checkpoints (quantization_config {"quant_method": "mxfp4"}): the experts'
  // gate_up_proj and down_proj as MXFP4 blocks and scales (model/mxfp4.h), dequantized to fp32
  // on load. Exports are bf16 or fp32.
  bool mxfp4_experts = false;

  LoraSpec lora;  // rank 0: no adapters, every parameter trains

  // Keys of config.json that do not change the maths but that transformers reads for generation
  // and that an export must keep (bos_token_id, eos_token_id, pad_token_id,
  // max_position_embeddings, initializer_range), as a JSON object's text; and the end-of-sequence
  // ids (eos_token_id: one id or a list).
  std::string passthrough = "{}";
  std::vector<int64_t> eos_token_ids;

  bool is_moe() const { return num_experts > 0; }
  int64_t num_moe_layers() const;
  int64_t last_moe_layer() const;  // -1 for a dense model
  // The width RoPE rotates (head_dim, or qk_rope_head_dim under MLA), and the attention's value
  // width per head (head_dim, or v_head_dim).
  int64_t rope_dim() const { return mla ? qk_rope_head_dim : head_dim; }
  int64_t value_dim() const { return mla ? v_head_dim : head_dim; }
  // Parameters of one routed expert: gate, up (I, H) and down (H, I), and GPT-OSS's biases.
  int64_t params_per_expert() const {
    return 3 * hidden_size * moe_intermediate_size +
           (expert_bias ? 2 * moe_intermediate_size + hidden_size : 0);
  }
  // The layers with a sliding window.
  int64_t num_sliding_layers() const {
    int64_t n = 0;
    for (int64_t l = 0; l < num_layers; ++l) n += window(l) > 0;
    return n;
  }
  // The sliding window of layer l's attention (0: none).
  int64_t window(int64_t l) const {
    return layer_sliding.empty() || !layer_sliding[size_t(l)] ? 0 : sliding_window;
  }
  // The attention's softmax scale: 1 / sqrt(head_dim), times DeepSeek-V3's YaRN mscale^2.
  double softmax_scale() const;
  // d_attn of the attention FLOPs (train/metrics_flops.h): heads * (query/key width + value
  // width) / 2, which is heads * head_dim without MLA.
  int64_t attention_flops_dim() const { return num_heads * (head_dim + value_dim()) / 2; }

  // Parses a config.json object; `source` (the file path) prefixes every error.
  static Result<ModelConfig> FromJson(const nlohmann::json& j, const std::string& source);
  // Reads DIR/config.json (or the given .json file).
  static Result<ModelConfig> Load(const std::string& dir_or_file);
  // A transformers-5 style config.json for this model (used by HF export).
  nlohmann::json ToJson() const;
};

}  // namespace xt
