// GPT-OSS's experts in a Hugging Face checkpoint and in the engine.
//
// The hub (and transformers 5's save_pretrained) stores each MoE layer's experts as four stacked
// tensors, `model.layers.L.mlp.experts.` +
//   gate_up_proj       [E, H, 2I]  x @ W: gate and up INTERLEAVED (gate = [..., 0::2],
//                                  up = [..., 1::2])
//   gate_up_proj_bias  [E, 2I]     interleaved likewise
//   down_proj          [E, I, H]   x @ W
//   down_proj_bias     [E, H]
// The engine's layout (model/params.h) holds them per expert, as for the other models, under
// names of its own: `...experts.<e>.gate_up_proj` (2I, H) [gate | up] rows, `...down_proj` (H, I),
// `...gate_up_proj_bias` (2I) [gate | up], `...down_proj_bias` (H). Reading picks expert e's
// slice out of the stacked tensor (nothing else is converted) and transposes / de-interleaves it;
// writing stacks the experts back. The same maps serve gradients (debug-dump).
//
// The hub's own releases (ModelConfig::mxfp4_experts) store gate_up_proj and down_proj as MXFP4
// (model/mxfp4.h), output rows first: `<name>_blocks` U8 [E, rows, in / 32, 16] and
// `<name>_scales` U8 [E, rows, in / 32], rows 2I (gate and up interleaved) or H; they are
// decoded on load, expert by expert.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/safetensors.h"
#include "xtuner/core/status.h"
#include "xtuner/core/tensor.h"
#include "xtuner/model/config.h"
#include "xtuner/model/params.h"

namespace xt {

// One per-expert parameter of the engine's layout: the stacked hub tensor it is a slice of.
struct GptOssExpertSlice {
  enum Kind { kGateUp, kDown, kGateUpBias, kDownBias };
  std::string hub;  // "model.layers.L.mlp.experts.gate_up_proj", ...
  int64_t expert = 0;
  Kind kind = kGateUp;
};

// The slice `name` (a layout name) stands for, when cfg is a GPT-OSS model and name one of its
// per-expert parameters; nothing otherwise.
std::optional<GptOssExpertSlice> GptOssExpertOf(const ModelConfig& cfg, const std::string& name);

// Whether `name` is one of the stacked expert tensors of a GPT-OSS checkpoint of config cfg
// (layer in range), MXFP4 blocks and scales included when the config says MXFP4.
bool IsGptOssStackedExpertTensor(const ModelConfig& cfg, const std::string& name);

// Expert s.expert's parameter `p` (of shape p.shape) read from the stacked tensor in `ckpt`, as
// fp32 in the engine's layout, from MXFP4 blocks and scales where the checkpoint has them.
// Errors name the file and tensor: missing, a stacked shape other than the config's, a dtype
// other than F32 / BF16 / F16 (U8 for blocks and scales), a scale byte of 255 (MXFP4's NaN) or
// a value that is not finite.
Result<Tensor> ReadGptOssExpert(const SafetensorsCheckpoint& ckpt, const ModelConfig& cfg,
                                const GptOssExpertSlice& s, const ParamInfo& p);

// The stacked hub tensors of every MoE layer of `layout` (the whole model's), built from `slab`
// (parameters or gradients, in the layout's offsets): (hub name, tensor in `dtype`, F32 or
// BF16), layer by layer in the order gate_up_proj, gate_up_proj_bias, down_proj,
// down_proj_bias. Each is converted as soon as it is built: beyond the result, one stacked fp32
// tensor at a time. merge_lora: each expert's weight with its LoRA adapters (cfg.lora, the
// routed experts') merged, as MergeLora (model/lora.h) merges it, one expert at a time.
// layer >= 0: that layer's alone, and only its part of `slab` is read.
std::vector<std::pair<std::string, Tensor>> GptOssStackedExperts(
    const ModelConfig& cfg, const ParamLayout& layout, const float* slab, DType dtype = DType::F32,
    bool merge_lora = false, int64_t layer = -1);

}  // namespace xt
