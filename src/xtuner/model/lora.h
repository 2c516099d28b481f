// LoRA adapters (ModelConfig::lora): which linear layers a model can adapt, their initial
// values, merging them into the weights, and PEFT's adapter format in and out.
//
// The adapted layers are the attention projections and dense MLPs (LoraSpec::targets), and the
// routed experts' stacked weights (LoraSpec::expert_targets: PEFT's target_parameters, one
// adapter per expert as PEFT's ParamWrapper adds). The router takes none. PEFT maps
// gate_proj / up_proj / down_proj (and "all-linear") onto a transformers-5 MoE model's fused
// routed experts (and its router), so those names are refused for a model with routed experts
// rather than meaning something else here ("auto" names its attention projections).
//
// The adapter format is PEFT's save_pretrained: DIR/adapter_config.json and
// DIR/adapter_model.safetensors, tensors named "base_model.model.<module>.lora_A.weight" (rank,
// in) and "...lora_B.weight" (out, rank), as PeftModel.from_pretrained loads them; the
// experts' stacked (PeftAdapterTensors).
#pragma once

#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/model/config.h"
#include "xtuner/model/params.h"

namespace xt {

// The short names of the linear layers of `cfg` an adapter can target, in model order (e.g.
// q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj for Qwen3).
std::vector<std::string> LoraTargetNames(const ModelConfig& cfg);

// "q_proj, v_proj" -> {"q_proj", "v_proj"}: lora.target_modules, comma-separated, blanks dropped.
std::vector<std::string> SplitLoraTargets(const std::string& s);

// `spec` made whole for `cfg`: "all-linear" expanded to LoraTargetNames, "auto" to those less
// gate_proj, up_proj and down_proj in a model with routed experts (all of them otherwise),
// duplicates dropped, and
// every field checked (rank in [1, 65536], alpha finite and > 0, each target a linear layer of
// this model). Errors name the key (`what` + ".rank", ".alpha", ".target_modules").
Result<LoraSpec> ResolveLora(LoraSpec spec, const ModelConfig& cfg, const std::string& what);

// The layers `spec` adapts, for people: "q_proj,v_proj,mlp.experts.down_proj".
std::string LoraTargetsText(const LoraSpec& spec);

// Elements of every routed expert's adapters (LoraSpec::expert_targets; 0 without), over all
// layers and experts: each expert's are as active as the expert (a token passes through
// top_k / num_experts of them).
int64_t ExpertAdapterParams(const ModelConfig& cfg);

// The parameters a token passes through (MoeActiveParams, train/metrics_flops.h) of a model with
// config cfg and `total_params` in all, its experts' adapters counted as their experts are.
int64_t ActiveParams(const ModelConfig& cfg, int64_t total_params);

// Elements of the adapters of `layout` (0 without LoRA): what a LoRA run trains.
int64_t AdapterParams(const ParamLayout& layout);

// PEFT's initialisation: A uniform in +-1/sqrt(in) (kaiming_uniform_ with a = sqrt(5)), B zero,
// each tensor's stream from `seed` and its offset. `info` must be an adapter (info.lora).
void InitLoraTensor(const ParamInfo& info, uint64_t seed, float* w);

// The weight `info` of `layout` (`slab` holds it and its adapters) with every adapter of it
// merged, W + scale * B A as PEFT's merge_and_unload, into a new *merged (F32, info.shape).
// False, copying nothing, when no adapter adapts it.
bool MergeLora(const ParamLayout& layout, const ModelConfig& cfg, const float* slab,
               const ParamInfo& info, Tensor* merged);

// The LoRA settings of a PEFT adapter (its directory or adapter_model.safetensors), for a model
// with config `cfg`: r, lora_alpha and use_rslora from its adapter_config.json, the targets from
// its tensors' layer names (checked by ResolveLora), after the config's checks below.
Result<LoraSpec> LoraSpecOfAdapter(const std::string& path, const ModelConfig& cfg);

// Reads a PEFT LoRA adapter (a directory or its adapter_model.safetensors) for a model with
// config `cfg` (cfg.lora set) and calls visit(info, data) with each adapter tensor of `layout`
// as fp32. Errors name the file and key: no such adapter (or only a pickled adapter_model.bin),
// another peft_type, r / lora_alpha / use_rslora that differ from cfg.lora, what the engine does
// not implement (DoRA, biases, fan_in_fan_out, an init_lora_weights that changes the base such
// as PiSSA or OLoRA, modules_to_save, rank or alpha patterns, per-layer subsets, adapters on
// parameters, aLoRA), a tensor missing, of the wrong shape, or one for a layer cfg.lora does
// not adapt.
Status ReadLoraAdapter(const std::string& path, const ModelConfig& cfg, const ParamLayout& layout,
                       const std::function<void(const ParamInfo&, const float*)>& visit);

// The LoRA settings a training checkpoint's config.json keeps under "xtuner_lora" (PEFT's
// keys: r, lora_alpha, use_rslora, target_modules), so that resume and convert rebuild the same
// layout; FromJson errors name `source`.
nlohmann::json LoraSpecToJson(const LoraSpec& spec);
Result<LoraSpec> LoraSpecFromJson(const nlohmann::json& j, const std::string& source);

// The adapters of `slab` (laid out by `layout`, a model with cfg.lora, every expert) by PEFT's
// names less "base_model.model.", the routed experts' stacked as PEFT's ParamWrapper holds them
// ("model.layers.1.mlp.experts.lora_A.weight" (E * r, in), "...lora_B.weight" (out, r * E)).
// The others wrap `slab`; the experts' B are copies.
std::vector<std::pair<std::string, Tensor>> PeftAdapterTensors(const ModelConfig& cfg,
                                                               const ParamLayout& layout,
                                                               const float* slab);

// Writes the adapters of `slab` (laid out by `layout`, a model with cfg.lora) as a PEFT adapter
// into `dir`: adapter_model.safetensors (F32) and adapter_config.json, naming
// `base_model` (may be empty) as base_model_name_or_path. Each file atomically.
Status SaveLoraAdapter(const ModelConfig& cfg, const ParamLayout& layout, const float* slab,
                       const std::string& dir, const std::string& base_model);

}  // namespace xt
