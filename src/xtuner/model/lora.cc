#include "xtuner/model/lora.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/rng.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/ops/ops.h"

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

}  // namespace

double LoraSpec::scale() const {
  return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
}

bool LoraSpec::Targets(const std::string& module) const {
  return std::find(targets.begin(), targets.end(), module) != targets.end();
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
  if (spec.targets.empty()) return Status::Error(key + " is empty: name the layers to adapt");
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
          " model would adapt its routed experts too (PEFT puts adapters on them), and the "
          "engine has no LoRA for routed experts yet: name the attention projections (" +
          Join(known) + " without gate_proj, up_proj, down_proj)");
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

bool MergeLora(const ParamLayout& layout, const LoraSpec& spec, const float* slab,
               const ParamInfo& info, Tensor* merged) {
  const int64_t n = NumElements(info.shape);
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
  for (const char* key :
       {"modules_to_save", "target_parameters", "rank_pattern", "alpha_pattern",
        "layers_to_transform", "layers_pattern", "trainable_token_indices",
        "alora_invocation_tokens", "layer_replication", "arrow_config", "megatron_config"}) {
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
  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(f.weights));
  for (const std::string& name : ckpt.names()) {
    const size_t at = name.rfind(".lora_");
    if (name.rfind(kPeftPrefix, 0) != 0 || at == std::string::npos ||
        name.find(".experts.") != std::string::npos)
      return Status::Error(f.weights + ": \"" + name +
                           "\" is not a LoRA adapter of a linear layer the engine adapts "
                           "(attention projections, dense MLPs)");
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

  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(f.weights));
  const std::string& file = f.weights;
  for (const ParamInfo& p : layout.params()) {
    if (!p.lora) continue;
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
    if (!p || !p->lora)
      return Status::Error(file + ": unexpected tensor \"" + name +
                           "\": no adapter of lora.target_modules (" + Join(cfg.lora.targets) +
                           ") has that name");
  }
  return Status::OK();
}

nlohmann::json LoraSpecToJson(const LoraSpec& spec) {
  return {{"r", spec.rank},
          {"lora_alpha", spec.alpha},
          {"use_rslora", spec.rslora},
          {"target_modules", spec.targets}};
}

Result<LoraSpec> LoraSpecFromJson(const nlohmann::json& j, const std::string& source) {
  const auto bad = [&] {
    return Status::Error(source +
                         ": \"xtuner_lora\" must be {\"r\": integer, \"lora_alpha\": "
                         "number, \"use_rslora\": bool, \"target_modules\": [names]}");
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
  return s;
}

Status SaveLoraAdapter(const ModelConfig& cfg, const ParamLayout& layout, const float* slab,
                       const std::string& dir, const std::string& base_model) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Error(dir + ": cannot create directory: " + ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamInfo& p : layout.params())
    if (p.lora)
      tensors.emplace_back(
          kPeftPrefix + p.name,
          Tensor::Wrap(DType::F32, p.shape, const_cast<float*>(slab + p.offset), nullptr));
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
