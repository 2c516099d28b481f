// The config.json keys only some architectures have (config_reader.h): DeepSeek-V3's latent
// attention, expert layout and FP8 quantization_config, and GPT-OSS's.
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "xtuner/model/config_reader.h"

namespace xt::config_internal {

// quantization_config: the block-quantized FP8 of transformers' FineGrainedFP8Config (weights
// F8_E4M3, scales fp32 or ue8m0, any activation scheme: activations are not quantized here) is
// dequantized on load; every other method is refused by name. modules_to_not_convert needs no
// reading: each tensor's stored dtype says whether it is quantized.
Status ReadQuantization(const json& j, const Reader& r, ModelConfig* c) {
  if (!r.has("quantization_config")) return Status::OK();
  const json& q = j["quantization_config"];
  const std::string unsupported =
      " (supported: quant_method \"fp8\" with fmt \"e4m3\" and a weight_block_size, the "
      "block-quantized FP8 of DeepSeek-V3 and Qwen3 -FP8 checkpoints; \"mxfp4\", GPT-OSS's "
      "experts); convert the weights to bf16 first";
  if (!q.is_object()) return r.Error("key \"quantization_config\" must be an object");
  const json method = q.value("quant_method", json(nullptr));
  if (method.is_string() && method.get<std::string>() == "mxfp4") {
    // Which modules hold MXFP4 blocks the checkpoint's tensors say (model/gpt_oss_experts.h):
    // modules_to_not_convert needs no reading.
    if (c->arch != Arch::kGptOss)
      return r.Error(
          "quantization_config.quant_method \"mxfp4\" is implemented for gpt_oss's "
          "experts only, not for " +
          c->model_type);
    c->mxfp4_experts = true;
    return Status::OK();
  }
  if (!method.is_string() || method.get<std::string>() != "fp8")
    return r.Error("quantization_config.quant_method " + DumpJson(method) + " is not supported" +
                   unsupported);
  // An optional key that must be one of `allowed` when present.
  auto one_of = [&](const char* key, std::initializer_list<const char*> allowed,
                    const std::string& supported) -> Status {
    if (!q.contains(key)) return Status::OK();
    for (const char* a : allowed)
      if (q[key].is_string() && q[key].get<std::string>() == a) return Status::OK();
    return r.Error(std::string("quantization_config.") + key + " " + DumpJson(q[key]) +
                   " is not supported" + supported);
  };
  XT_RETURN_IF_ERROR(one_of("fmt", {"e4m3"}, unsupported));
  XT_RETURN_IF_ERROR(
      one_of("activation_scheme", {"dynamic", "static"}, " (supported: \"dynamic\", \"static\")"));
  XT_RETURN_IF_ERROR(one_of("scale_fmt", {"float", "ue8m0"}, " (supported: \"float\", \"ue8m0\")"));
  c->fp8_weights = true;
  c->fp8_block[0] = c->fp8_block[1] = 128;  // transformers' default
  if (!q.contains("weight_block_size")) return Status::OK();
  const json& b = q["weight_block_size"];
  bool ok = b.is_array() && b.size() == 2;
  for (size_t i = 0; ok && i < 2; ++i) {
    ok = b[i].is_number_integer() && b[i].get<int64_t>() > 0 && b[i].get<int64_t>() <= (1 << 20);
    if (ok) c->fp8_block[i] = b[i].get<int64_t>();
  }
  if (!ok)
    return r.Error("quantization_config.weight_block_size " + DumpJson(b) +
                   " is not supported (supported: [rows, columns], two positive integers; "
                   "per-tensor FP8 scales are not implemented)");
  return Status::OK();
}

Status Positive(const Reader& r, const char* name, int64_t v) {
  return v > 0 ? Status::OK()
               : r.Error(std::string("\"") + name + "\" must be positive, found " +
                         std::to_string(v));
}

// DeepSeek-V3's multi-head latent attention. Its K and V have one head per query head, so
// num_key_value_heads must equal num_attention_heads (transformers would fail otherwise).
Status ReadMla(const Reader& r, ModelConfig* c) {
  c->mla = true;
  c->q_lora_rank = 1536;  // transformers' default; null means a plain q_proj
  if (r.has("q_lora_rank")) {
    XT_RETURN_IF_ERROR(r.Int("q_lora_rank", &c->q_lora_rank, true));
    XT_RETURN_IF_ERROR(Positive(r, "q_lora_rank (null for a plain q_proj)", c->q_lora_rank));
  } else if (r.Contains("q_lora_rank")) {
    c->q_lora_rank = 0;
  }
  XT_RETURN_IF_ERROR(r.Int("kv_lora_rank", &c->kv_lora_rank, true));
  XT_RETURN_IF_ERROR(r.Int("qk_nope_head_dim", &c->qk_nope_head_dim, true));
  XT_RETURN_IF_ERROR(r.Int("qk_rope_head_dim", &c->qk_rope_head_dim, true));
  XT_RETURN_IF_ERROR(r.Int("v_head_dim", &c->v_head_dim, true));
  XT_RETURN_IF_ERROR(r.NotNull("rope_interleave"));
  XT_RETURN_IF_ERROR(r.Bool("rope_interleave", &c->rope_interleave, false));
  XT_RETURN_IF_ERROR(r.Int("num_mtp_layers", &c->num_nextn_predict_layers, false));  // v5 alias
  XT_RETURN_IF_ERROR(r.Int("num_nextn_predict_layers", &c->num_nextn_predict_layers, false));
  for (auto [name, v] : {std::pair{"kv_lora_rank", c->kv_lora_rank},
                         {"qk_nope_head_dim", c->qk_nope_head_dim},
                         {"qk_rope_head_dim", c->qk_rope_head_dim},
                         {"v_head_dim", c->v_head_dim}}) {
    XT_RETURN_IF_ERROR(Positive(r, name, v));
  }
  if (c->num_nextn_predict_layers < 0) return r.Error("num_nextn_predict_layers must be >= 0");
  if (c->qk_rope_head_dim % 2 != 0) return r.Error("qk_rope_head_dim must be even for RoPE");
  if (c->v_head_dim > c->qk_nope_head_dim + c->qk_rope_head_dim)
    return r.Error("v_head_dim (" + std::to_string(c->v_head_dim) +
                   ") larger than qk_nope_head_dim + qk_rope_head_dim is not implemented");
  if (c->num_kv_heads != c->num_heads)
    return r.Error("num_key_value_heads (" + std::to_string(c->num_kv_heads) +
                   ") must equal num_attention_heads (" + std::to_string(c->num_heads) +
                   ") for multi-head latent attention");
  c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
  return Status::OK();
}

// DeepSeek-V3's MoE: the first first_k_dense_replace layers dense, the rest MoE with a shared
// expert and the sigmoid group-limited router (transformers' defaults where a key is absent).
// The remote-code keys of the hub's configs are checked where they would change the maths.
Status ReadDeepseekMoe(const json& j, const Reader& r, ModelConfig* c) {
  c->router = RouterKind::kSigmoidGroup;
  c->num_experts = 256;
  c->top_k = 8;
  c->n_shared_experts = 1;
  c->n_group = 8;
  c->topk_group = 4;
  c->routed_scaling_factor = 2.5;
  c->norm_topk_prob = true;
  int64_t first_dense = 3;
  XT_RETURN_IF_ERROR(r.Int("num_local_experts", &c->num_experts, false));  // transformers' alias
  XT_RETURN_IF_ERROR(r.Int("n_routed_experts", &c->num_experts, false));
  XT_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c->top_k, false));
  XT_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c->moe_intermediate_size, true));
  XT_RETURN_IF_ERROR(r.Int("n_shared_experts", &c->n_shared_experts, false));
  XT_RETURN_IF_ERROR(r.Int("n_group", &c->n_group, false));
  XT_RETURN_IF_ERROR(r.Int("topk_group", &c->topk_group, false));
  XT_RETURN_IF_ERROR(r.Double("routed_scaling_factor", &c->routed_scaling_factor, false));
  XT_RETURN_IF_ERROR(r.NotNull("norm_topk_prob"));
  XT_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c->norm_topk_prob, false));
  XT_RETURN_IF_ERROR(r.Int("first_k_dense_replace", &first_dense, false));
  for (auto [name, v] : {std::pair{"n_routed_experts", c->num_experts},
                         {"num_experts_per_tok", c->top_k},
                         {"moe_intermediate_size", c->moe_intermediate_size},
                         {"n_group", c->n_group},
                         {"topk_group", c->topk_group}}) {
    XT_RETURN_IF_ERROR(Positive(r, name, v));
  }
  if (c->n_shared_experts < 0) return r.Error("n_shared_experts must be >= 0");
  if (!(c->routed_scaling_factor > 0)) return r.Error("routed_scaling_factor must be positive");
  if (first_dense < 0 || first_dense > c->num_layers)
    return r.Error("first_k_dense_replace (" + std::to_string(first_dense) + ") must lie in [0, " +
                   std::to_string(c->num_layers) + "]");
  const int64_t E = c->num_experts, G = c->n_group;
  if (G > 64) return r.Error("n_group > 64 is not implemented (found " + std::to_string(G) + ")");
  if (E % G != 0 || E / G < 2)
    return r.Error("n_routed_experts (" + std::to_string(E) + ") must be n_group (" +
                   std::to_string(G) + ") groups of at least 2 experts");
  if (c->topk_group > G)
    return r.Error("topk_group (" + std::to_string(c->topk_group) + ") exceeds n_group (" +
                   std::to_string(G) + ")");
  if (c->top_k > c->topk_group * (E / G))
    return r.Error("num_experts_per_tok (" + std::to_string(c->top_k) +
                   ") exceeds the experts of topk_group groups (" +
                   std::to_string(c->topk_group * (E / G)) + ")");
  // Keys of the hub's remote-code configs: only the values transformers' model computes.
  // aux_loss_alpha and seq_aux (DeepSeek's sequence-wise balancing loss) are ignored, as
  // transformers ignores them: the bias balances (train.router_bias_update_speed).
  auto expect = [&](const char* key, const std::string& want) -> Status {
    if (!r.has(key)) return Status::OK();
    if (j[key].is_string() && j[key].get<std::string>() == want) return Status::OK();
    return r.Error(std::string("key \"") + key + "\" " + DumpJson(j[key]) +
                   " is not implemented (supported: \"" + want + "\")");
  };
  XT_RETURN_IF_ERROR(expect("scoring_func", "sigmoid"));
  XT_RETURN_IF_ERROR(expect("topk_method", "noaux_tc"));
  int64_t freq = 1;
  XT_RETURN_IF_ERROR(r.Int("moe_layer_freq", &freq, false));
  if (freq != 1) return r.Error("moe_layer_freq != 1 is not implemented (supported: 1)");
  for (int64_t l = first_dense; l < c->num_layers; ++l) c->layer_is_moe[l] = true;
  if (first_dense > 0) XT_RETURN_IF_ERROR(Positive(r, "intermediate_size", c->intermediate_size));
  return Status::OK();
}

// GPT-OSS's config.json with transformers' defaults where it has none: YaRN RoPE (factor 32 over
// an original context of 4096, beta_fast 32, beta_slow 1, not truncated) with rope_theta 150000
// (GptOssConfig.__post_init__, default_theta).
json GptOssRopeDefaults(const json& j) {
  json out = j;
  auto given = [&](const char* key) {
    return j.contains(key) && !j[key].is_null() && !(j[key].is_object() && j[key].empty());
  };
  if (!given("rope_scaling") && !given("rope_parameters"))
    out["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 32.0},
                              {"beta_fast", 32.0},   {"beta_slow", 1.0},
                              {"truncate", false},   {"original_max_position_embeddings", 4096}};
  const bool theta =
      given("rope_theta") || (given("rope_parameters") && j["rope_parameters"].is_object() &&
                              j["rope_parameters"].contains("rope_theta"));
  if (!theta) out["rope_theta"] = 150000.0;
  return out;
}

// GPT-OSS: attention sinks on every layer; a sliding window on the layers layer_types calls
// "sliding_attention" (by default the even ones); biases on the router and the experts; the
// clamped GLU, whose limit transformers fixes at 7 (a config's swiglu_limit must agree).
Status ReadGptOss(const json& j, const Reader& r, ModelConfig* c) {
  c->attention_sinks = true;
  c->router_logit_bias = true;
  c->expert_bias = true;
  c->expert_act = ExpertActivation::kGptOssGlu;
  c->sliding_window = 128;
  if (r.Contains("sliding_window")) {
    c->sliding_window = 0;  // null: no window (then no layer may slide)
    XT_RETURN_IF_ERROR(r.Int("sliding_window", &c->sliding_window, false));
    if (r.has("sliding_window"))
      XT_RETURN_IF_ERROR(Positive(r, "sliding_window (null for none)", c->sliding_window));
  }
  c->layer_sliding.assign(c->num_layers, false);
  if (r.has("layer_types")) {
    const json& t = j["layer_types"];
    if (!t.is_array() || int64_t(t.size()) != c->num_layers)
      return r.Error("key \"layer_types\" must be a list of num_hidden_layers (" +
                     std::to_string(c->num_layers) + ") layer types");
    for (size_t l = 0; l < t.size(); ++l) {
      const std::string type = t[l].is_string() ? t[l].get<std::string>() : DumpJson(t[l]);
      if (type != "sliding_attention" && type != "full_attention")
        return r.Error("layer_types[" + std::to_string(l) + "] \"" + type +
                       "\" is not implemented (supported: \"sliding_attention\", "
                       "\"full_attention\")");
      c->layer_sliding[l] = type == "sliding_attention";
    }
  } else {
    for (int64_t l = 0; l < c->num_layers; ++l) c->layer_sliding[size_t(l)] = l % 2 == 0;
  }
  if (c->sliding_window == 0 &&
      std::find(c->layer_sliding.begin(), c->layer_sliding.end(), true) != c->layer_sliding.end())
    return r.Error(
        "sliding_window is null but layer_types has \"sliding_attention\" layers (by default "
        "every other one): give the window, or make every layer \"full_attention\" "
        "(transformers refuses this config too)");
  double limit = 7.0;
  XT_RETURN_IF_ERROR(r.Double("swiglu_limit", &limit, false));
  if (limit != 7.0)
    return r.Error("swiglu_limit " + std::to_string(limit) +
                   " is not implemented (supported: 7.0, which transformers uses whatever the "
                   "config says)");
  return Status::OK();
}

}  // namespace xt::config_internal
