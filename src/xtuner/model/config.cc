#include "xtuner/model/config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "xtuner/core/json.h"
#include "xtuner/model/config_reader.h"

namespace xt {

namespace {

using config_internal::GptOssRopeDefaults;
using config_internal::Positive;
using config_internal::ReadDeepseekMoe;
using config_internal::Reader;
using config_internal::ReadGptOss;
using config_internal::ReadMla;
using config_internal::ReadQuantization;
using nlohmann::json;

double YarnMscale(double scale, double mscale) {  // transformers' get_mscale
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// A rope_parameters (v5) or rope_scaling (v4) object `p` named `where`: its type, and YaRN's
// parameters as transformers reads them (standardize_rope_params, _compute_yarn_parameters):
// factor required (null: max_position_embeddings over the original context); the original
// context from the config's top level, else the object, else max_position_embeddings;
// attention_factor given, or from factor, mscale and mscale_all_dim; beta_fast / beta_slow 0 or
// null mean 32 / 1; truncate absent means true, null false.
Status ReadRopeScaling(const json& j, const json& p, const std::string& where, const Reader& r,
                       ModelConfig* c) {
  for (const char* key : {"rope_type", "type"})
    if (p.contains(key) && !p[key].is_string())
      return r.Error(where + "." + key + " must be a string, found " + DumpJson(p[key]));
  const std::string type = p.value("rope_type", p.value("type", std::string("default")));
  if (type == "default") return Status::OK();
  if (type != "yarn")
    return r.Error(where + " type \"" + type +
                   "\" is not implemented; supported: \"default\" (no scaling), \"yarn\"");
  RopeScaling& y = c->rope_scaling;
  y.yarn = true;
  auto number = [&](const json& o, const std::string& name, const char* key,
                    double* out) -> Status {
    if (!o.contains(key) || o[key].is_null()) return Status::OK();
    if (!o[key].is_number()) return r.Error(name + key + " must be a number");
    *out = o[key].get<double>();
    return Status::OK();
  };
  const std::string in = where + ".";
  double max_pos = 0, original = 0, factor = 0, af = 0, mscale = 0;
  XT_RETURN_IF_ERROR(number(j, "", "max_position_embeddings", &max_pos));
  XT_RETURN_IF_ERROR(number(p, in, "original_max_position_embeddings", &original));
  XT_RETURN_IF_ERROR(number(j, "", "original_max_position_embeddings", &original));  // wins
  if (original <= 0) original = max_pos;
  if (!(original >= 1 && original <= 2147483647.0))
    return r.Error(where +
                   ": yarn needs original_max_position_embeddings (or "
                   "max_position_embeddings)");
  if (!p.contains("factor")) return r.Error(where + ": yarn needs \"factor\"");
  XT_RETURN_IF_ERROR(number(p, in, "factor", &factor));
  if (p["factor"].is_null() && max_pos > 0) factor = max_pos / original;
  if (!(factor > 0 && std::isfinite(factor)))
    return r.Error(in + "factor must be a positive number for yarn");
  XT_RETURN_IF_ERROR(number(p, in, "mscale", &mscale));
  XT_RETURN_IF_ERROR(number(p, in, "mscale_all_dim", &y.mscale_all_dim));
  XT_RETURN_IF_ERROR(number(p, in, "beta_fast", &y.beta_fast));
  XT_RETURN_IF_ERROR(number(p, in, "beta_slow", &y.beta_slow));
  if (y.beta_fast == 0) y.beta_fast = 32;  // transformers: `or 32`, `or 1`
  if (y.beta_slow == 0) y.beta_slow = 1;
  if (p.contains("truncate")) {
    if (!p["truncate"].is_null() && !p["truncate"].is_boolean())
      return r.Error(in + "truncate must be true or false");
    y.truncate = p["truncate"].is_boolean() && p["truncate"].get<bool>();
  }
  if (p.contains("partial_rotary_factor") && p["partial_rotary_factor"] != 1.0)
    return r.Error(in + "partial_rotary_factor is not implemented (supported: 1)");
  y.factor = factor;
  y.original_max_position_embeddings = int64_t(original);
  if (p.contains("attention_factor") && !p["attention_factor"].is_null()) {
    XT_RETURN_IF_ERROR(number(p, in, "attention_factor", &af));
    if (!(af > 0)) return r.Error(in + "attention_factor must be positive");
    y.attention_factor = af;
  } else if (mscale != 0 && y.mscale_all_dim != 0) {
    y.attention_factor = YarnMscale(factor, mscale) / YarnMscale(factor, y.mscale_all_dim);
  } else {
    y.attention_factor = YarnMscale(factor, 1.0);
  }
  if (!(y.attention_factor > 0 && std::isfinite(y.attention_factor)))
    return r.Error(in + "mscale and mscale_all_dim give an attention factor of " +
                   std::to_string(y.attention_factor) + ": it must be positive");
  return Status::OK();
}

// The RoPE parameters as transformers takes them: rope_scaling when it is set (it replaces
// rope_parameters), else rope_parameters, else none; their own rope_theta, else the top-level
// one. The default RoPE, or YaRN.
Status ReadRope(const json& j, const Reader& r, ModelConfig* c) {
  const json* p = nullptr;
  std::string where;
  if (r.has("rope_scaling")) {
    if (!j["rope_scaling"].is_object())
      return r.Error("key \"rope_scaling\" must be an object or null");
    if (!j["rope_scaling"].empty()) p = &j["rope_scaling"], where = "rope_scaling";
  }
  if (!p && r.has("rope_parameters")) {
    if (!j["rope_parameters"].is_object())
      return r.Error("key \"rope_parameters\" must be an object");
    p = &j["rope_parameters"], where = "rope_parameters";
  }
  XT_RETURN_IF_ERROR(r.Double("rope_theta", &c->rope_theta, false));
  if (p) {
    if (p->contains("rope_theta") && !(*p)["rope_theta"].is_null()) {
      if (!(*p)["rope_theta"].is_number()) return r.Error(where + ".rope_theta must be a number");
      c->rope_theta = (*p)["rope_theta"].get<double>();  // wins over the top-level one
    } else if (where == "rope_parameters" && !r.has("rope_theta")) {
      return r.Error("missing rope_parameters.rope_theta");
    }
    XT_RETURN_IF_ERROR(ReadRopeScaling(j, *p, where, r, c));
  }
  if (!(c->rope_theta > 0)) return r.Error("rope_theta must be positive");
  return Status::OK();
}

// Parameters of the model, from its sizes alone (in double: no size can overflow it): an upper
// bound (an lm_head is counted even when tied, and the larger MLP for every layer), to refuse
// absurd configs early.
double RoughParamCount(const ModelConfig& c) {
  const double H = double(c.hidden_size), Hq = double(c.num_heads), D = double(c.head_dim);
  double attn = 0;
  if (c.mla) {
    const double Rq = double(c.q_lora_rank), Rkv = double(c.kv_lora_rank);
    attn = (Rq > 0 ? Rq * H + Hq * D * Rq : Hq * D * H) + (Rkv + double(c.qk_rope_head_dim)) * H +
           Hq * double(c.qk_nope_head_dim + c.v_head_dim) * Rkv + H * Hq * double(c.v_head_dim);
  } else {
    attn = H * D * double(2 * c.num_heads + 2 * c.num_kv_heads);
  }
  const double dense = 3 * H * double(c.intermediate_size);
  const double moe = double(c.num_experts) * (3 * H * double(c.moe_intermediate_size) + 2 * H +
                                              2 * double(c.moe_intermediate_size) + 2) +
                     3 * H * double(c.moe_intermediate_size * c.n_shared_experts);
  const double norms = 4 * H + 2 * D + double(c.q_lora_rank + c.kv_lora_rank) + Hq * (2 * D + 1) +
                       2 * double(c.num_kv_heads) * D;  // + GPT-OSS's biases
  return double(c.vocab_size) * H * 2 +
         double(c.num_layers) * (attn + std::max(dense, moe) + norms);
}

// Sizes past what any model needs, refused before the model is laid out: each width at most
// 2^24, at most 2^16 experts (and layers: checked as soon as read), 2^20 expert matrices in
// all, 2^48 parameters.
constexpr int64_t kMostLayers = int64_t(1) << 16;

Result<ModelConfig> Bounded(ModelConfig c, const Reader& r) {
  constexpr int64_t kWidth = int64_t(1) << 24, kCount = int64_t(1) << 16;
  for (auto [name, v, most] : {std::tuple{"vocab_size", c.vocab_size, kWidth},
                               {"hidden_size", c.hidden_size, kWidth},
                               {"num_attention_heads", c.num_heads, kWidth},
                               {"head_dim", c.head_dim, kWidth},
                               {"intermediate_size", c.intermediate_size, kWidth},
                               {"moe_intermediate_size", c.moe_intermediate_size, kWidth},
                               {"q_lora_rank", c.q_lora_rank, kWidth},
                               {"kv_lora_rank", c.kv_lora_rank, kWidth},
                               {"v_head_dim", c.v_head_dim, kWidth},
                               {"the expert count", c.num_experts, kCount},
                               {"n_shared_experts", c.n_shared_experts, kCount}}) {
    if (v > most)
      return r.Error(std::string(name) + " " + std::to_string(v) +
                     " is larger than xtuner supports (" + std::to_string(most) + ")");
  }
  if (c.num_experts * c.num_moe_layers() > (int64_t(1) << 20))
    return r.Error(std::to_string(c.num_experts) + " experts in each of " +
                   std::to_string(c.num_moe_layers()) +
                   " MoE layers are more than xtuner supports (2^20 in all)");
  const double n = RoughParamCount(c);
  if (n > std::ldexp(1.0, 48)) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", n);
    return r.Error(std::string("the model would have about ") + buf +
                   " parameters, more than xtuner supports (2^48)");
  }
  return c;
}

}  // namespace

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (bool m : layer_is_moe) n += m;
  return n;
}

int64_t ModelConfig::last_moe_layer() const {
  for (int64_t l = int64_t(layer_is_moe.size()) - 1; l >= 0; --l)
    if (layer_is_moe[size_t(l)]) return l;
  return -1;
}

Result<ModelConfig> ModelConfig::FromJson(const json& j, const std::string& source) {
  if (!j.is_object()) return Status::Error(source + ": config must be a JSON object");
  Reader r(j, source);
  ModelConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string())
    return r.Error(
        "missing \"model_type\" (supported: qwen3, qwen3_moe, mixtral, deepseek_v3, gpt_oss)");
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type == "qwen3") {
    c.arch = Arch::kQwen3;
  } else if (c.model_type == "qwen3_moe") {
    c.arch = Arch::kQwen3Moe;
  } else if (c.model_type == "mixtral") {
    c.arch = Arch::kMixtral;
  } else if (c.model_type == "deepseek_v3") {
    c.arch = Arch::kDeepseekV3;
  } else if (c.model_type == "gpt_oss") {
    c.arch = Arch::kGptOss;
  } else {
    return r.Error("model_type \"" + c.model_type +
                   "\" is not supported (supported: qwen3, qwen3_moe, mixtral, deepseek_v3, "
                   "gpt_oss)");
  }

  {  // generation keys an export keeps
    json keep = json::object();
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id",
                            "max_position_embeddings", "initializer_range"})
      if (j.contains(key)) keep[key] = j[key];
    c.passthrough = DumpJson(keep);
    if (r.has("eos_token_id")) {
      const json& e = j["eos_token_id"];
      const json ids = e.is_array() ? e : json::array({e});
      for (const json& id : ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
          return r.Error("key \"eos_token_id\" must be a token id or a list of them, found " +
                         DumpJson(e));
        c.eos_token_ids.push_back(id.get<int64_t>());
      }
    }
  }
  if (c.arch == Arch::kGptOss) {  // GptOssConfig's defaults for keys transformers may omit
    c.rms_norm_eps = 1e-5;
    c.router_aux_loss_coef = 0.001;
  }
  XT_RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size, true));
  XT_RETURN_IF_ERROR(r.Int("hidden_size", &c.hidden_size, true));
  XT_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c.num_layers, true));
  XT_RETURN_IF_ERROR(r.Int("num_attention_heads", &c.num_heads, true));
  c.num_kv_heads = c.arch == Arch::kGptOss ? 8 : c.num_heads;
  XT_RETURN_IF_ERROR(r.Int("num_key_value_heads", &c.num_kv_heads, false));
  XT_RETURN_IF_ERROR(r.Int("intermediate_size", &c.intermediate_size,
                           c.arch != Arch::kQwen3Moe && c.arch != Arch::kDeepseekV3));
  XT_RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps, false));
  XT_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings, false));
  if (c.arch == Arch::kGptOss) {
    const json with_defaults = GptOssRopeDefaults(j);
    XT_RETURN_IF_ERROR(ReadRope(with_defaults, Reader(with_defaults, source), &c));
  } else {
    XT_RETURN_IF_ERROR(ReadRope(j, r, &c));
  }
  XT_RETURN_IF_ERROR(ReadQuantization(j, r, &c));
  for (auto [name, v] : {std::pair{"vocab_size", c.vocab_size},
                         {"hidden_size", c.hidden_size},
                         {"num_hidden_layers", c.num_layers},
                         {"num_attention_heads", c.num_heads},
                         {"num_key_value_heads", c.num_kv_heads}}) {
    XT_RETURN_IF_ERROR(Positive(r, name, v));
  }
  if (c.num_layers > kMostLayers)  // before anything per layer is made
    return r.Error("num_hidden_layers " + std::to_string(c.num_layers) +
                   " is larger than xtuner supports (" + std::to_string(kMostLayers) + ")");
  if (c.num_heads % c.num_kv_heads != 0)
    return r.Error("num_attention_heads (" + std::to_string(c.num_heads) +
                   ") must be a multiple of num_key_value_heads (" +
                   std::to_string(c.num_kv_heads) + ")");
  if (c.arch == Arch::kDeepseekV3) {
    XT_RETURN_IF_ERROR(ReadMla(r, &c));  // head_dim: the query/key width
  } else if (r.has("head_dim")) {
    XT_RETURN_IF_ERROR(r.Int("head_dim", &c.head_dim, true));
  } else if (c.arch == Arch::kGptOss) {
    c.head_dim = 64;
  } else {
    if (c.hidden_size % c.num_heads != 0)
      return r.Error("no \"head_dim\" and hidden_size is not a multiple of num_attention_heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  XT_RETURN_IF_ERROR(Positive(r, "head_dim", c.head_dim));
  if (!c.mla && c.head_dim % 2 != 0) return r.Error("head_dim must be even for RoPE");

  // Options that change the maths and are not implemented: refuse rather than compute wrong.
  if (j.contains("hidden_act") && !j["hidden_act"].is_string())
    return r.Error("key \"hidden_act\" must be a string, found " + DumpJson(j["hidden_act"]));
  std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu")
    return r.Error("hidden_act \"" + act + "\" is not implemented (supported: silu)");
  bool flag = c.arch == Arch::kGptOss;  // transformers' default
  XT_RETURN_IF_ERROR(r.Bool("attention_bias", &flag, false));
  if (flag && c.arch != Arch::kGptOss)
    return r.Error("attention_bias=true is not implemented for " + c.model_type +
                   " (supported: false)");
  c.attention_bias = flag;
  double dropout = 0;  // transformers applies it in training
  XT_RETURN_IF_ERROR(r.Double("attention_dropout", &dropout, false));
  if (dropout != 0) return r.Error("attention_dropout != 0 is not implemented (supported: 0)");
  flag = false;
  XT_RETURN_IF_ERROR(r.Bool("use_sliding_window", &flag, false));
  if (flag) return r.Error("use_sliding_window=true is not implemented (supported: false)");
  if (c.arch == Arch::kMixtral && r.has("sliding_window"))
    return r.Error("sliding_window attention is not implemented for mixtral (supported: null)");
  double jitter = 0;
  XT_RETURN_IF_ERROR(r.Double("router_jitter_noise", &jitter, false));
  if (jitter != 0) return r.Error("router_jitter_noise != 0 is not implemented (supported: 0)");

  c.qk_norm = c.arch == Arch::kQwen3 || c.arch == Arch::kQwen3Moe;
  c.layer_is_moe.assign(c.num_layers, false);
  if (c.arch == Arch::kQwen3) {
    XT_RETURN_IF_ERROR(Positive(r, "intermediate_size", c.intermediate_size));
    return Bounded(std::move(c), r);
  }
  if (c.arch == Arch::kDeepseekV3) {
    XT_RETURN_IF_ERROR(ReadDeepseekMoe(j, r, &c));
    return Bounded(std::move(c), r);
  }

  // MoE.
  if (r.has("num_local_experts")) {
    XT_RETURN_IF_ERROR(r.Int("num_local_experts", &c.num_experts, true));
  } else if (r.has("num_experts")) {
    XT_RETURN_IF_ERROR(r.Int("num_experts", &c.num_experts, true));
  } else {
    return r.Error("missing the expert count (\"num_local_experts\" or \"num_experts\")");
  }
  XT_RETURN_IF_ERROR(r.Int("num_experts_per_tok", &c.top_k, true));
  XT_RETURN_IF_ERROR(Positive(r, "num_experts", c.num_experts));
  XT_RETURN_IF_ERROR(Positive(r, "num_experts_per_tok", c.top_k));
  if (c.top_k > c.num_experts)
    return r.Error("num_experts_per_tok (" + std::to_string(c.top_k) +
                   ") exceeds the expert count (" + std::to_string(c.num_experts) + ")");
  XT_RETURN_IF_ERROR(r.Double("router_aux_loss_coef", &c.router_aux_loss_coef, false));

  if (c.arch == Arch::kMixtral || c.arch == Arch::kGptOss) {
    XT_RETURN_IF_ERROR(Positive(r, "intermediate_size", c.intermediate_size));
    c.moe_intermediate_size = c.intermediate_size;
    // Mixtral renormalises the top-k softmax weights; GPT-OSS takes the softmax of the top-k
    // logits, which is the same.
    c.norm_topk_prob = true;
    c.layer_is_moe.assign(c.num_layers, true);
    if (c.arch == Arch::kGptOss) XT_RETURN_IF_ERROR(ReadGptOss(j, r, &c));
  } else {  // qwen3_moe
    XT_RETURN_IF_ERROR(r.Int("moe_intermediate_size", &c.moe_intermediate_size, true));
    XT_RETURN_IF_ERROR(Positive(r, "moe_intermediate_size", c.moe_intermediate_size));
    c.norm_topk_prob = false;
    XT_RETURN_IF_ERROR(r.Bool("norm_topk_prob", &c.norm_topk_prob, false));
    int64_t step = 1;
    XT_RETURN_IF_ERROR(r.Int("decoder_sparse_step", &step, false));
    XT_RETURN_IF_ERROR(Positive(r, "decoder_sparse_step", step));
    std::vector<int64_t> mlp_only;
    if (r.has("mlp_only_layers")) {
      const json& m = j["mlp_only_layers"];
      if (!m.is_array()) return r.Error("key \"mlp_only_layers\" must be a list of layer indices");
      for (const json& v : m) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= c.num_layers)
          return r.Error("mlp_only_layers entry " + DumpJson(v) + " is not a layer index in [0, " +
                         std::to_string(c.num_layers) + ")");
        mlp_only.push_back(v.get<int64_t>());
      }
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      bool only_mlp = std::find(mlp_only.begin(), mlp_only.end(), l) != mlp_only.end();
      c.layer_is_moe[l] = !only_mlp && (l + 1) % step == 0;
    }
    bool any_dense = c.num_moe_layers() < c.num_layers;
    if (any_dense) XT_RETURN_IF_ERROR(Positive(r, "intermediate_size", c.intermediate_size));
  }
  return Bounded(std::move(c), r);
}

Result<ModelConfig> ModelConfig::Load(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  std::string path = dir_or_file;
  if (!fs::exists(path))
    return Status::Error(path + ": no such model directory (expected config.json and safetensors)");
  if (fs::is_directory(path)) path = (fs::path(path) / "config.json").string();
  XT_ASSIGN_OR_RETURN(const json j, ReadJsonFile(path));
  return FromJson(j, path);
}

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(double(head_dim));
  if (mla && rope_scaling.yarn && rope_scaling.mscale_all_dim != 0) {
    const double m = YarnMscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    scale *= m * m;  // transformers' yarn_apply_mscale
  }
  return scale;
}

json ModelConfig::ToJson() const {
  json j;
  static const char* kArch[] = {"Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "MixtralForCausalLM",
                                "DeepseekV3ForCausalLM", "GptOssForCausalLM"};
  j["architectures"] = {kArch[int(arch)]};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = intermediate_size;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_parameters"] = {{"rope_theta", rope_theta}, {"rope_type", "default"}};
  if (rope_scaling.yarn) {
    const RopeScaling& y = rope_scaling;
    j["rope_parameters"] = {
        {"rope_theta", rope_theta},
        {"rope_type", "yarn"},
        {"factor", y.factor},
        {"attention_factor", y.attention_factor},
        {"beta_fast", y.beta_fast},
        {"beta_slow", y.beta_slow},
        {"original_max_position_embeddings", y.original_max_position_embeddings},
        {"truncate", y.truncate}};
    if (y.mscale_all_dim != 0) j["rope_parameters"]["mscale_all_dim"] = y.mscale_all_dim;
  }
  if (!passthrough.empty())
    if (const Result<json> keep = ParseJson(passthrough); keep.ok() && keep->is_object())
      j.update(*keep);
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  j["dtype"] = "float32";
  if (arch == Arch::kDeepseekV3) {
    j["head_dim"] = qk_rope_head_dim;  // as transformers writes it
    j["q_lora_rank"] = q_lora_rank > 0 ? json(q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["qk_head_dim"] = head_dim;
    j["v_head_dim"] = v_head_dim;
    j["rope_interleave"] = rope_interleave;
    j["num_nextn_predict_layers"] = 0;  // the saved checkpoint has no MTP layers
    j["n_routed_experts"] = num_experts;
    j["num_experts_per_tok"] = top_k;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["n_shared_experts"] = n_shared_experts;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["norm_topk_prob"] = norm_topk_prob;
    int64_t first_dense = 0;
    while (first_dense < num_layers && !layer_is_moe[first_dense]) ++first_dense;
    j["first_k_dense_replace"] = first_dense;
  } else if (is_moe()) {
    j["num_local_experts"] = num_experts;
    j["num_experts_per_tok"] = top_k;
    j["router_aux_loss_coef"] = router_aux_loss_coef;
    if (arch == Arch::kQwen3Moe) {
      j["moe_intermediate_size"] = moe_intermediate_size;
      j["norm_topk_prob"] = norm_topk_prob;
      j["decoder_sparse_step"] = 1;
      json only = json::array();
      for (int64_t l = 0; l < num_layers; ++l)
        if (!layer_is_moe[l]) only.push_back(l);
      j["mlp_only_layers"] = only;
    }
    if (arch == Arch::kGptOss) {
      j["attention_bias"] = attention_bias;
      j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
      json types = json::array();
      for (int64_t l = 0; l < num_layers; ++l)
        types.push_back(window(l) > 0 ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
      j["swiglu_limit"] = glu_limit;
    }
  }
  return j;
}

}  // namespace xt
