#include "xtuner/model/lora.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/rng.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/ops/ops.h"
#include "xtuner/train/metrics_flops.h"

namespace xt {

namespace fs = std::filesystem;

namespace {

const char kPeftPrefix[] = "base_model.model.";

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// "model.layers.0.self_attn.q_proj.weight" -> "q_proj"
std::string ShortModule(const std::string& weight_name) {
  const std::string m = weight_name.substr(0, weight_name.size() - 7);  // less ".weight"
  return m.substr(m.rfind('.') + 1);
}

bool IsAdaptableLinear(const ParamInfo& p) {
  const std::string& n = p.name;
  if (p.shape.size() != 2 || p.no_grad || n.size() < 7 || n.compare(n.size() - 7, 7, ".weight"))
    return false;
  if (n == "lm_head.weight" || n.find("embed_tokens") != std::string::npos) return false;
  if (n.find(".experts.") != std::string::npos) return false;  // routed experts
  const std::string m = ShortModule(n);
  return m != "gate" && m != "router";  // the router (GPT-OSS's: mlp.router, not a Linear)
}

// One stacked routed-experts adapter of a layer, as ParamLayout lays it out: the weight
// (count, out, in) at `base`, A (count, r, in) at a, B (count, out, r) at b.
struct ExpertAdapter {
  int64_t layer = 0;
  std::string param;  // "gate_up_proj" | "down_proj"
  int64_t base = -1, out = 0, in = 0, a = -1, b = -1;
};

std::vector<ExpertAdapter> ExpertAdapters(const ParamLayout& layout, const ModelConfig& cfg) {
  std::vector<ExpertAdapter> out;
  const int64_t H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  for (int64_t l = 0; l < int64_t(layout.layers.size()); ++l) {
    const LayerOffsets& o = layout.layers[l];
    if (o.gate_up_lora_a >= 0)
      out.push_back({l, "gate_up_proj", o.gate_up, 2 * I, H, o.gate_up_lora_a, o.gate_up_lora_b});
    if (o.down_lora_a >= 0)
      out.push_back({l, "down_proj", o.down, H, I, o.down_lora_a, o.down_lora_b});
  }
  return out;
}

// Where expert e's B_e[o, j] (out, r) here is in PEFT's stacked B (out, r * E): at
// [o', j * E + e], o' = o but for GPT-OSS's gate_up, whose gate and up outputs transformers
// interleaves (here: [gate | up] halves).
int64_t PeftBIndex(const ModelConfig& cfg, const ExpertAdapter& x, int64_t e, int64_t o,
                   int64_t j) {
  const int64_t E = cfg.num_experts, r = cfg.lora.rank, half = x.out / 2;
  if (cfg.arch == Arch::kGptOss && x.param == "gate_up_proj")
    o = o < half ? 2 * o : 2 * (o - half) + 1;
  return o * r * E + j * E + e;
}

// PEFT's name (less "base_model.model.") of layer l's stacked adapter of the experts' `param`,
// kind "lora_A" (E * r, in) or "lora_B" (out, E * r). PEFT nests one ParamWrapper per targeted
// parameter in the experts module's parameter order, so with both targeted gate_up_proj's is
// the inner one ("experts.base_layer.lora_A.weight") and down_proj's the outer.
std::string PeftExpertName(const LoraSpec& spec, int64_t l, const std::string& param,
                           const std::string& kind) {
  const bool inner = param == "gate_up_proj" && spec.TargetsExperts(l, "down_proj");
  return "model.layers." + std::to_string(l) + ".mlp.experts." + (inner ? "base_layer." : "") +
         kind + ".weight";
}

// spec.expert_targets (PEFT's target_parameters) as LoraSpec keeps them, a form of their own
// that reads back the same: "mlp.experts.gate_up_proj" / "mlp.experts.down_proj" for every MoE
// layer, "<l>.mlp.experts.gate_up_proj" for layer l's, each once, every layer's first, then by
// layer, gate_up before down. PEFT matches an entry against
// "model.layers.<l>.mlp.experts.gate_up_proj" by the whole name or a dotted suffix: an entry
// is one of those suffixes, from the last part ("gate_up_proj") to the whole name.
Result<std::vector<std::string>> ResolveExpertTargets(const LoraSpec& spec, const ModelConfig& cfg,
                                                      const std::string& what) {
  const std::string key = what + ".target_parameters";
  const char* const kParams[] = {"gate_up_proj", "down_proj"};
  std::vector<std::pair<int64_t, std::string>> found;  // (layer, or -1: every layer; param)
  for (const std::string& t : spec.expert_targets) {
    std::string param, head;
    for (const char* p : kParams)
      if (t.size() >= std::strlen(p) &&
          t.compare(t.size() - std::strlen(p), std::string::npos, p) == 0)
        param = p, head = t.substr(0, t.size() - std::strlen(p));
    // head: "", "experts.", "mlp.experts.", then "<l>.", "layers.<l>." or "model.layers.<l>."
    // before "mlp.experts.".
    int64_t layer = -1;
    bool ok = !param.empty() && (head.empty() || head == "experts." || head == "mlp.experts.");
    if (!param.empty() && !ok && head.size() > 12 &&
        head.compare(head.size() - 12, 12, "mlp.experts.") == 0) {
      std::string l = head.substr(0, head.size() - 12);  // "<l>." after one prefix at most
      if (l.rfind("model.layers.", 0) == 0) {
        l = l.substr(13);
      } else if (l.rfind("layers.", 0) == 0) {
        l = l.substr(7);
      }
      // PEFT matches the layer's index as written: "07" names no layer.
      ok = l.size() > 1 && l.size() < 12 && l.back() == '.' &&
           l.find_first_not_of("0123456789") == l.size() - 1 && (l[0] != '0' || l.size() == 2);
      if (ok) layer = std::stoll(l.substr(0, l.size() - 1));
    }
    if (!ok)
      return Status::Error(key + ": \"" + t +
                           "\" is not a routed experts' weight the engine adapts (it takes "
                           "mlp.experts.gate_up_proj and mlp.experts.down_proj, or their last "
                           "one or two parts, for every MoE layer; \"7.mlp.experts.down_proj\" "
                           "for layer 7's)");
    if (!cfg.is_moe())
      return Status::Error(key + ": a " + cfg.model_type +
                           " model has no routed experts (it is dense): leave it empty");
    if (layer >= 0 && (layer >= cfg.num_layers || !cfg.layer_is_moe[layer]))
      return Status::Error(
          key + ": \"" + t + "\": layer " + std::to_string(layer) +
          (layer >= cfg.num_layers
               ? " is not in the model (it has " + std::to_string(cfg.num_layers) + " layers)"
               : " has no routed experts (a dense layer)"));
    found.emplace_back(layer, param);
  }
  // A param named for every MoE layer one by one is every layer's (one spelling for each set).
  for (const char* p : kParams) {
    int64_t named = 0;
    for (int64_t l = 0; l < cfg.num_layers; ++l)
      named += cfg.layer_is_moe[l] && std::find(found.begin(), found.end(),
                                                std::make_pair(l, std::string(p))) != found.end();
    if (named > 0 && named == cfg.num_moe_layers()) found.insert(found.begin(), {-1, p});
  }
  // Every layer's first (-1 sorts first), then by layer; a layer's entry for a param every
  // layer has is dropped.
  std::stable_sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first
                              : a.second == "gate_up_proj" && b.second != a.second;
  });
  std::vector<std::string> out;
  for (const auto& [layer, param] : found) {
    const std::string every_layer = "mlp.experts." + param;
    const std::string name = layer < 0 ? every_layer : std::to_string(layer) + "." + every_layer;
    const bool every = layer >= 0 && std::find(out.begin(), out.end(), every_layer) != out.end();
    if (!every && std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  if (!out.empty() && spec.dropout > 0)
    return Status::Error(what + ".dropout must be 0 with " + key +
                         ": an adapter on the experts' stacked weights has no input of its own "
                         "to drop (PEFT's ParamWrapper refuses lora_dropout too)");
  return out;
}

// An adapter config's target_parameters (absent or null: none), each a name; errors name `path`.
Result<std::vector<std::string>> TargetParametersOf(const nlohmann::json& j,
                                                    const std::string& path) {
  std::vector<std::string> out;
  const auto it = j.find("target_parameters");
  if (it == j.end() || it->is_null()) return out;
  const auto bad = [&] {
    return Status::Error(path + ": target_parameters must be a list of names, not " +
                         DumpJson(*it).substr(0, 200));
  };
  if (!it->is_array()) return bad();
  for (const nlohmann::json& t : *it) {
    if (!t.is_string()) return bad();
    out.push_back(t.get<std::string>());
  }
  return out;
}

}  // namespace

double LoraSpec::scale() const {
  return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
}

bool LoraSpec::Targets(const std::string& module) const {
  return std::find(targets.begin(), targets.end(), module) != targets.end();
}

bool LoraSpec::TargetsExperts(int64_t layer, const std::string& param) const {
  for (const std::string& t : expert_targets)
    if (t == "mlp.experts." + param || t == std::to_string(layer) + ".mlp.experts." + param)
      return true;
  return false;
}

std::vector<std::string> LoraTargetNames(const ModelConfig& cfg) {
  ModelConfig base = cfg;
  base.lora = LoraSpec();
  std::vector<std::string> names;
  const ParamLayout layout(base);
  for (const ParamInfo& p : layout.params()) {
    if (!IsAdaptableLinear(p)) continue;
    const std::string m = ShortModule(p.name);
    if (std::find(names.begin(), names.end(), m) == names.end()) names.push_back(m);
  }
  return names;
}

std::vector<std::string> SplitLoraTargets(const std::string& s) {
  std::vector<std::string> out;
  std::string name;
  for (const char c : s + ",") {
    if (c == ',') {
      if (!name.empty()) out.push_back(name);
      name.clear();
    } else if (c != ' ' && c != '\t') {
      name += c;
    }
  }
  return out;
}

Result<LoraSpec> ResolveLora(LoraSpec spec, const ModelConfig& cfg, const std::string& what) {
  if (spec.rank < 1 || spec.rank > 65536)
    return Status::Error(what + ".rank must be in [1, 65536], not " + std::to_string(spec.rank));
  // (Compared in double: a double beyond fp32's range has no defined conversion to float.)
  const double fp32_max = std::numeric_limits<float>::max();
  if (!std::isfinite(spec.alpha) || spec.alpha <= 0 || !(spec.scale() <= fp32_max))
    return Status::Error(what + ".alpha must be > 0 and give a finite fp32 scale (alpha / rank)");
  if (!(spec.dropout >= 0 && spec.dropout < 1) || !(spec.dropout_scale() <= fp32_max)) {
    char v[32];
    std::snprintf(v, sizeof v, "%g", spec.dropout);
    return Status::Error(what +
                         ".dropout must be in [0, 1) and keep the scale finite in fp32 (the "
                         "adapters' scale / (1 - dropout)), not " +
                         v);
  }
  const std::vector<std::string> known = LoraTargetNames(cfg);
  const std::string key = what + ".target_modules";
  XT_ASSIGN_OR_RETURN(spec.expert_targets, ResolveExpertTargets(spec, cfg, what));
  if (spec.targets.empty() && spec.expert_targets.empty())
    return Status::Error(key + " is empty (and so is " + what +
                         ".target_parameters): name the layers to adapt");
  std::vector<std::string> out;
  for (const std::string& t : spec.targets) {
    if (t == "auto") {  // every layer the engine can adapt in this model
      for (const std::string& name : known)
        if (!cfg.is_moe() || (name != "gate_proj" && name != "up_proj" && name != "down_proj"))
          out.push_back(name);
      continue;
    }
    const bool all = t == "all-linear";
    const bool mlp = t == "gate_proj" || t == "up_proj" || t == "down_proj";
    // (GPT-OSS's experts and router are no nn.Linear: PEFT's all-linear is its attention.)
    if (cfg.is_moe() && cfg.arch != Arch::kGptOss && (all || mlp))
      return Status::Error(
          key + ": \"" + t + "\" in a " + cfg.model_type +
          " model means, in PEFT on transformers 5, adapters on its fused routed experts (and, "
          "for all-linear, on its router), which the engine does not lay out so: name the "
          "attention projections here (" +
          Join(known) + " without gate_proj, up_proj, down_proj) and the experts in " + what +
          ".target_parameters (mlp.experts.gate_up_proj, mlp.experts.down_proj)");
    if (!all && std::find(known.begin(), known.end(), t) == known.end())
      return Status::Error(key + ": \"" + t + "\" is no linear layer of a " + cfg.model_type +
                           " model with this config.json (it has: " + Join(known) +
                           "; or \"all-linear\", \"auto\")");
    if (all)
      out.insert(out.end(), known.begin(), known.end());
    else
      out.push_back(t);
  }
  // Model order, each once, whatever the order given.
  std::vector<std::string> ordered;
  for (const std::string& k : known)
    if (std::find(out.begin(), out.end(), k) != out.end()) ordered.push_back(k);
  spec.targets = ordered;
  return spec;
}

std::string LoraTargetsText(const LoraSpec& spec) {
  std::string s;
  for (const std::string& t : spec.targets) s += (s.empty() ? "" : ",") + t;
  for (const std::string& t : spec.expert_targets) s += (s.empty() ? "" : ",") + t;
  return s;
}

int64_t ExpertAdapterParams(const ModelConfig& cfg) {
  if (!cfg.lora.enabled()) return 0;
  const int64_t r = cfg.lora.rank, H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  int64_t n = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    if (cfg.layer_is_moe[l])
      n += cfg.num_experts * ((cfg.lora.TargetsExperts(l, "gate_up_proj") ? r * (H + 2 * I) : 0) +
                              (cfg.lora.TargetsExperts(l, "down_proj") ? r * (I + H) : 0));
  return n;
}

int64_t ActiveParams(const ModelConfig& cfg, int64_t total_params) {
  const int64_t xa = ExpertAdapterParams(cfg);
  return MoeActiveParams(total_params - xa, cfg.num_moe_layers(), cfg.num_experts, cfg.top_k,
                         cfg.params_per_expert()) +
         (cfg.num_experts > 0 ? xa / cfg.num_experts * cfg.top_k : 0);
}

int64_t AdapterParams(const ParamLayout& layout) {
  int64_t n = 0;
  for (const ParamInfo& p : layout.params())
    if (p.lora) n += NumElements(p.shape);
  return n;
}

void InitLoraTensor(const ParamInfo& info, uint64_t seed, float* w) {
  const int64_t n = NumElements(info.shape);
  const bool is_a = info.name.find(".lora_A.") != std::string::npos;
  if (!is_a) {
    std::fill(w, w + n, 0.0f);
    return;
  }
  uint64_t s = seed ^ (0x9e3779b97f4a7c15ull * uint64_t(info.offset + 1));
  const double bound = 1.0 / std::sqrt(double(info.shape[1]));
  for (int64_t i = 0; i < n; ++i) {
    w[i] = float((2.0 * UniformOpen01(&s) - 1.0) * bound);
  }
}

bool MergeLora(const ParamLayout& layout, const ModelConfig& cfg, const float* slab,
               const ParamInfo& info, Tensor* merged) {
  const LoraSpec& spec = cfg.lora;
  const int64_t n = NumElements(info.shape);
  // An expert's weight (gate_proj, up_proj: rows of its gate_up; down_proj) with an adapter:
  // + scale * B_e[rows] A_e.
  for (const ExpertAdapter& x : ExpertAdapters(layout, cfg)) {
    const int64_t per = x.out * x.in, at = info.offset - x.base;
    if (at < 0 || at >= layout.expert_count * per) continue;
    const int64_t e = at / per, row0 = at % per / x.in, r = spec.rank;
    XT_CHECK(n % x.in == 0 && row0 + n / x.in <= x.out, "MergeLora: " + info.name);
    *merged = Tensor::Empty(DType::F32, info.shape);
    float* w = merged->f32();
    std::vector<float> delta(n);
    ops::gemm_f32(delta.data(), slab + x.b + (e * x.out + row0) * r, slab + x.a + e * r * x.in,
                  n / x.in, x.in, r, false, false, 0.0f);
    const float scale = float(spec.scale());
    for (int64_t i = 0; i < n; ++i) w[i] = slab[info.offset + i] + delta[i] * scale;
    return true;
  }
  std::vector<const LoraPiece*> pieces;  // the adapters of exactly this weight's rows
  for (const LayerOffsets& o : layout.layers)
    for (const LoraPiece& piece : o.lora)
      if (piece.base + piece.row0 * piece.in == info.offset && piece.rows * piece.in == n)
        pieces.push_back(&piece);
  if (pieces.empty()) return false;
  *merged = Tensor::Empty(DType::F32, info.shape);
  float* w = merged->f32();
  std::copy(slab + info.offset, slab + info.offset + n, w);
  const float scale = float(spec.scale());
  std::vector<float> delta;
  for (const LoraPiece* p : pieces) {
    delta.assign(n, 0.0f);
    // delta (rows, in) = B (rows, r) @ A (r, in), in fp32 whatever the matmul precision
    ops::gemm_f32(delta.data(), slab + p->b, slab + p->a, p->rows, p->in, spec.rank, false, false,
                  0.0f);
    for (int64_t i = 0; i < n; ++i) w[i] += delta[i] * scale;
  }
  return true;
}

namespace {

// A PEFT adapter on disk: its directory, adapter_config.json and adapter_model.safetensors.
struct AdapterFiles {
  std::string dir, config, weights;
};

// `path`: the adapter's directory or its adapter_model.safetensors.
Result<AdapterFiles> FindAdapter(const std::string& path) {
  std::error_code ec;
  const bool is_dir = fs::is_directory(path, ec);
  if (!is_dir && !fs::is_regular_file(path, ec))
    return Status::Error(path +
                         ": no such PEFT adapter (a directory holding adapter_config.json "
                         "and adapter_model.safetensors)");
  AdapterFiles f;
  f.dir = is_dir ? path : fs::path(path).parent_path().string();
  if (f.dir.empty()) f.dir = ".";
  f.config = (fs::path(f.dir) / "adapter_config.json").string();
  f.weights = is_dir ? (fs::path(path) / "adapter_model.safetensors").string() : path;
  if (!fs::exists(f.config, ec))
    return Status::Error(f.config + ": no such file (a PEFT adapter directory holds it)");
  if (!fs::exists(f.weights, ec)) {
    const bool bin = fs::exists(fs::path(f.dir) / "adapter_model.bin", ec);
    return Status::Error(f.weights + ": no such file" +
                         (bin ? std::string(": adapter_model.bin (pickle) is not read; save the "
                                            "adapter with safe_serialization=True")
                              : std::string()));
  }
  return f;
}

// adapter_config.json, checked for what the engine does not implement: a PEFT adapter of any
// other kind or variant is refused by name rather than read as a plain LoRA one.
Result<nlohmann::json> ReadAdapterConfig(const std::string& path) {
  XT_ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(path));
  if (!j.is_object()) return Status::Error(path + ": not a JSON object");
  auto get = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto bad = [&](const std::string& key, const std::string& why) {
    return Status::Error(path + ": " + key + " " + why);
  };
  const nlohmann::json* pt = get("peft_type");
  if (!pt || !pt->is_string() || *pt != "LORA")
    return bad("peft_type", "must be \"LORA\" (this reads LoRA adapters only)");
  if (!j.contains("r") || !j["r"].is_number_integer() || !j.contains("lora_alpha") ||
      !j["lora_alpha"].is_number())
    return Status::Error(path +
                         ": not a LoRA adapter config (integer \"r\" and number "
                         "\"lora_alpha\" required)");
  for (const char* key : {"use_dora", "fan_in_fan_out", "lora_bias", "use_qalora", "use_bdlora"}) {
    const nlohmann::json* v = get(key);
    if (v && !(v->is_boolean() && !v->get<bool>()))
      return bad(key, "is " + DumpJson(*v) + ": not implemented");
  }
  if (const nlohmann::json* b = get("bias"); b && (!b->is_string() || *b != "none"))
    return bad("bias", "must be \"none\": adapters with biases are not implemented");
  // PiSSA, OLoRA, CorDA and LoftQ change the base weights as they initialise the adapter: such
  // an adapter applies to that changed base, not to the model it names.
  if (const nlohmann::json* init = get("init_lora_weights");
      init && !init->is_boolean() &&
      !(init->is_string() && (*init == "gaussian" || *init == "eva" || *init == "orthogonal")))
    return bad("init_lora_weights",
               "is " + DumpJson(*init) +
                   ": an adapter initialised so belongs to a changed base model; convert it to "
                   "a plain LoRA adapter first (PEFT's save_pretrained with "
                   "path_initial_model_for_weight_conversion)");
  for (const char* key : {"modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform",
                          "layers_pattern", "trainable_token_indices", "alora_invocation_tokens",
                          "layer_replication", "arrow_config", "megatron_config"}) {
    const nlohmann::json* v = get(key);
    if (v && !v->empty() && !(v->is_boolean() && !v->get<bool>()))
      return bad(key, "is " + DumpJson(*v).substr(0, 200) +
                          ": not implemented (the engine reads plain LoRA adapters: one adapter "
                          "of rank r on each targeted linear layer of every decoder layer)");
  }
  return j;
}

// r, lora_alpha and use_rslora (absent: false) of a config ReadAdapterConfig accepted.
LoraSpec SettingsOf(const nlohmann::json& j) {
  LoraSpec spec;
  spec.rank = j["r"].get<int64_t>();
  spec.alpha = j["lora_alpha"].get<double>();
  spec.rslora =
      j.contains("use_rslora") && j["use_rslora"].is_boolean() && j["use_rslora"].get<bool>();
  return spec;
}

}  // namespace

Result<LoraSpec> LoraSpecOfAdapter(const std::string& path, const ModelConfig& cfg) {
  XT_ASSIGN_OR_RETURN(const AdapterFiles f, FindAdapter(path));
  XT_ASSIGN_OR_RETURN(const nlohmann::json j, ReadAdapterConfig(f.config));
  LoraSpec spec = SettingsOf(j);
  XT_ASSIGN_OR_RETURN(spec.expert_targets, TargetParametersOf(j, f.config));
  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(f.weights));
  for (const std::string& name : ckpt.names()) {
    const size_t at = name.rfind(".lora_");
    if (name.rfind(kPeftPrefix, 0) != 0 || at == std::string::npos)
      return Status::Error(f.weights + ": \"" + name +
                           "\" is not a LoRA adapter of a linear layer the engine adapts "
                           "(attention projections, dense MLPs, routed experts)");
    if (name.find(".mlp.experts.") != std::string::npos) continue;  // (target_parameters')
    const std::string module = name.substr(0, at);
    const std::string short_name = module.substr(module.rfind('.') + 1);
    if (std::find(spec.targets.begin(), spec.targets.end(), short_name) == spec.targets.end())
      spec.targets.push_back(short_name);
  }
  return ResolveLora(spec, cfg, f.config + ": adapter");
}

Status ReadLoraAdapter(const std::string& path, const ModelConfig& cfg, const ParamLayout& layout,
                       const std::function<void(const ParamInfo&, const float*)>& visit) {
  XT_ASSIGN_OR_RETURN(const AdapterFiles f, FindAdapter(path));
  XT_ASSIGN_OR_RETURN(const nlohmann::json j, ReadAdapterConfig(f.config));
  auto bad = [&](const std::string& key, const std::string& why) {
    return Status::Error(f.config + ": " + key + " " + why);
  };
  const LoraSpec got = SettingsOf(j);
  if (got.rank != cfg.lora.rank)
    return bad("r",
               "is " + DumpJson(j["r"]) + ", but lora.rank is " + std::to_string(cfg.lora.rank));
  if (got.alpha != cfg.lora.alpha)
    return bad("lora_alpha", "is " + DumpJson(j["lora_alpha"]) + ", but lora.alpha is " +
                                 DumpJson(nlohmann::json(cfg.lora.alpha)));
  if (got.rslora != cfg.lora.rslora)
    return bad("use_rslora", std::string("is ") + (got.rslora ? "true" : "false") +
                                 ", but lora.rslora is " + (cfg.lora.rslora ? "true" : "false"));

  XT_ASSIGN_OR_RETURN(const std::vector<std::string> tp, TargetParametersOf(j, f.config));
  LoraSpec tp_spec;  // (dropout 0: the run's rate is the run's to check)
  tp_spec.expert_targets = tp;
  XT_ASSIGN_OR_RETURN(tp_spec.expert_targets,
                      ResolveExpertTargets(tp_spec, cfg, f.config + ": adapter"));
  if (tp_spec.expert_targets != cfg.lora.expert_targets)
    return bad("target_parameters", "is " + DumpJson(nlohmann::json(tp)) +
                                        ", but lora.target_parameters is " +
                                        DumpJson(nlohmann::json(cfg.lora.expert_targets)));

  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(f.weights));
  const std::string& file = f.weights;
  // The experts' stacked adapters, sliced into this layout's experts (see SaveLoraAdapter).
  std::vector<std::string> expert_names;
  const int64_t E = cfg.num_experts, r = cfg.lora.rank;
  for (const ExpertAdapter& x : ExpertAdapters(layout, cfg)) {
    for (const char* kind : {"lora_A", "lora_B"}) {
      const bool is_a = kind[5] == 'A';
      const std::string name = kPeftPrefix + PeftExpertName(cfg.lora, x.layer, x.param, kind);
      const Shape shape = is_a ? Shape{E * r, x.in} : Shape{x.out, r * E};
      if (!ckpt.contains(name))
        return Status::Error(file + ": adapter has no tensor \"" + name + "\" (shape " +
                             ShapeString(shape) + "), which lora.target_parameters needs (layer " +
                             std::to_string(x.layer) + "'s mlp.experts." + x.param + ")");
      XT_ASSIGN_OR_RETURN(Tensor t, ckpt.GetF32(name, shape));
      expert_names.push_back(name);
      std::vector<float> mine(is_a ? r * x.in : x.out * r);
      for (int64_t e = layout.expert_begin; e < layout.expert_begin + layout.expert_count; ++e) {
        const ParamInfo* p = layout.Find(ExpertAdapterName(cfg, x.layer, e, x.param, kind));
        XT_CHECK(p != nullptr,
                 "ReadLoraAdapter: the layout has no adapter of expert " + std::to_string(e));
        if (is_a) {
          std::copy(t.f32() + e * r * x.in, t.f32() + (e + 1) * r * x.in, mine.begin());
        } else {
          for (int64_t o = 0; o < x.out; ++o)
            for (int64_t jj = 0; jj < r; ++jj)
              mine[o * r + jj] = t.f32()[PeftBIndex(cfg, x, e, o, jj)];
        }
        visit(*p, mine.data());
      }
    }
  }
  for (const ParamInfo& p : layout.params()) {
    if (!p.lora || p.name.find(".experts.") != std::string::npos) continue;
    const std::string name = kPeftPrefix + p.name;
    if (!ckpt.contains(name))
      return Status::Error(file + ": adapter has no tensor \"" + name + "\" (shape " +
                           ShapeString(p.shape) + "), which lora.target_modules (" +
                           Join(cfg.lora.targets) + ") needs");
    XT_ASSIGN_OR_RETURN(Tensor t, ckpt.GetF32(name, p.shape));
    visit(p, t.f32());
  }
  for (const std::string& name : ckpt.names()) {  // (every layout holds all the adapters)
    const ParamInfo* p = name.rfind(kPeftPrefix, 0) == 0
                             ? layout.Find(name.substr(sizeof(kPeftPrefix) - 1))
                             : nullptr;
    const bool expert =
        std::find(expert_names.begin(), expert_names.end(), name) != expert_names.end();
    if (!expert && (!p || !p->lora || p->name.find(".experts.") != std::string::npos))
      return Status::Error(file + ": unexpected tensor \"" + name +
                           "\": no adapter of lora.target_modules (" + Join(cfg.lora.targets) +
                           ") or lora.target_parameters " +
                           DumpJson(nlohmann::json(cfg.lora.expert_targets)) + " has that name");
  }
  return Status::OK();
}

nlohmann::json LoraSpecToJson(const LoraSpec& spec) {
  nlohmann::json j = {{"r", spec.rank},
                      {"lora_alpha", spec.alpha},
                      {"use_rslora", spec.rslora},
                      {"target_modules", spec.targets}};
  if (!spec.expert_targets.empty()) j["target_parameters"] = spec.expert_targets;
  return j;
}

Result<LoraSpec> LoraSpecFromJson(const nlohmann::json& j, const std::string& source) {
  const auto bad = [&] {
    return Status::Error(source +
                         ": \"xtuner_lora\" must be {\"r\": integer, \"lora_alpha\": "
                         "number, \"use_rslora\": bool, \"target_modules\": [names], "
                         "optionally \"target_parameters\": [names]}");
  };
  if (!j.is_object() || !j.contains("r") || !j["r"].is_number_integer() ||
      !j.contains("lora_alpha") || !j["lora_alpha"].is_number() || !j.contains("use_rslora") ||
      !j["use_rslora"].is_boolean() || !j.contains("target_modules") ||
      !j["target_modules"].is_array())
    return bad();
  LoraSpec s;
  s.rank = j["r"].get<int64_t>();
  s.alpha = j["lora_alpha"].get<double>();
  s.rslora = j["use_rslora"].get<bool>();
  for (const nlohmann::json& t : j["target_modules"]) {
    if (!t.is_string()) return bad();
    s.targets.push_back(t.get<std::string>());
  }
  if (j.contains("target_parameters")) {  // (absent before LoRA on the routed experts)
    if (!j["target_parameters"].is_array()) return bad();
    for (const nlohmann::json& t : j["target_parameters"]) {
      if (!t.is_string()) return bad();
      s.expert_targets.push_back(t.get<std::string>());
    }
  }
  return s;
}

std::vector<std::pair<std::string, Tensor>> PeftAdapterTensors(const ModelConfig& cfg,
                                                               const ParamLayout& layout,
                                                               const float* slab) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamInfo& p : layout.params())
    if (p.lora && p.name.find(".experts.") == std::string::npos)
      tensors.emplace_back(
          p.name, Tensor::Wrap(DType::F32, p.shape, const_cast<float*>(slab + p.offset), nullptr));
  // The experts' adapters stacked as PEFT's ParamWrapper holds them: A (E * r, in), expert e's
  // rows e * r ... (as laid out here); B (out, r * E), B[o, j * E + e] = B_e[o, j].
  const int64_t E = cfg.num_experts, r = cfg.lora.rank;
  const std::vector<ExpertAdapter> experts = ExpertAdapters(layout, cfg);
  XT_CHECK(experts.empty() || layout.expert_count == E,
           "PeftAdapterTensors: the layout must hold every expert");
  for (const ExpertAdapter& x : experts) {
    tensors.emplace_back(
        PeftExpertName(cfg.lora, x.layer, x.param, "lora_A"),
        Tensor::Wrap(DType::F32, {E * r, x.in}, const_cast<float*>(slab + x.a), nullptr));
    Tensor b = Tensor::Empty(DType::F32, {x.out, r * E});
    for (int64_t e = 0; e < E; ++e)
      for (int64_t o = 0; o < x.out; ++o)
        for (int64_t j = 0; j < r; ++j)
          b.f32()[PeftBIndex(cfg, x, e, o, j)] = slab[x.b + (e * x.out + o) * r + j];
    tensors.emplace_back(PeftExpertName(cfg.lora, x.layer, x.param, "lora_B"), std::move(b));
  }
  return tensors;
}

Status SaveLoraAdapter(const ModelConfig& cfg, const ParamLayout& layout, const float* slab,
                       const std::string& dir, const std::string& base_model) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Error(dir + ": cannot create directory: " + ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors = PeftAdapterTensors(cfg, layout, slab);
  for (auto& [name, t] : tensors) name = kPeftPrefix + name;
  XT_RETURN_IF_ERROR(
      WriteSafetensors((fs::path(dir) / "adapter_model.safetensors").string(), tensors));
  nlohmann::json j = {{"peft_type", "LORA"},
                      {"task_type", "CAUSAL_LM"},
                      {"base_model_name_or_path", base_model},
                      {"r", cfg.lora.rank},
                      {"lora_alpha", cfg.lora.alpha},
                      {"lora_dropout", cfg.lora.dropout},
                      {"use_rslora", cfg.lora.rslora},
                      {"target_modules", cfg.lora.targets},
                      {"target_parameters", nlohmann::json(cfg.lora.expert_targets)},
                      {"bias", "none"},
                      {"fan_in_fan_out", false},
                      {"use_dora", false},
                      {"init_lora_weights", true},
                      {"inference_mode", true},
                      {"modules_to_save", nullptr},
                      {"rank_pattern", nlohmann::json::object()},
                      {"alpha_pattern", nlohmann::json::object()}};
  return WriteFileAtomically((fs::path(dir) / "adapter_config.json").string(),
                             DumpJson(j, 2) + "\n");
}

}  // namespace xt
