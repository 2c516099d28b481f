// Hugging Face checkpoints in and out: config.json + safetensors (single or sharded; F32, BF16
// or F16 weights, upcast to fp32 on load, or block-quantized FP8 ones, dequantized on load:
// model/fp8_weights.h) under the hub's tensor names. Export writes fp32, bf16 or block-quantized
// FP8.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/model/transformer.h"

namespace xt {

// A fingerprint of the weights of the Hugging Face checkpoint at `path` (as Open takes it), in
// hex: XXH3-128 over each file of it, in name order, of its name, size, first MiB (header and
// first tensors) and 16 evenly spread 64 KiB samples. The same files give the same fingerprint;
// other weights almost surely another (a change confined between the samples goes unseen).
// A LoRA run's checkpoints hold its adapters only, and name their base by this.
Result<std::string> HfWeightsFingerprint(const std::string& path);

// Reads every parameter of `model` from the checkpoint at `path` (a directory, an index file or
// one .safetensors file). Errors name the file and tensor: a tensor missing, of the wrong shape
// or of a non-float dtype, an FP8 weight without its scales, or a tensor the model has no place
// for. LoRA adapters (model/lora.h) are not read. Tolerated extras: rotary inv_freq buffers,
// lm_head.weight in a model with tied embeddings (HF ignores it too), DeepSeek-V3's
// multi-token-prediction layers, and the scales of FP8 weights.
Status LoadHfWeights(Transformer* model, const std::string& path);

// The same checks, for the parameters of `layout` (of a model with config `cfg`): calls
// visit(info, data) with each tensor as fp32 (numel of info.shape), in layout order; with
// `only`, of those parameters only for which only(info) holds (the others are not read).
Status ReadHfWeights(const std::string& path, const ModelConfig& cfg, const ParamLayout& layout,
                     const std::function<void(const ParamInfo&, const float*)>& visit,
                     const std::function<bool(const ParamInfo&)>& only = nullptr);

// config.json from `dir`, then its weights; with `adapter` (a PEFT LoRA adapter directory) the
// model also holds that adapter (ModelConfig::lora from LoraSpecOfAdapter, model/lora.h).
Result<std::unique_ptr<Transformer>> LoadHfModel(const std::string& dir,
                                                 const std::string& adapter = "");

// The weights of an export:
//   kF32   every tensor F32;
//   kBf16  BF16, but buffers (DeepSeek-V3's e_score_correction_bias) stay F32, as transformers
//          keeps them;
//   kFp8   a block-quantized FP8 checkpoint laid out as the hub's -FP8 releases, quantized
//          with the arithmetic of transformers' Fp8Quantize (model/fp8_weights.h): the weights
//          PlanFp8Export picks become F8_E4M3 codes + F32 weight_scale_inv, in the blocks of the
//          checkpoint the model was loaded from (model.config().fp8_block), else 128 x 128; the
//          rest is as kBf16. config.json gets a quantization_config (Fp8QuantizationConfig)
//          naming the linear modules left in BF16, or none when nothing could be quantized.
//          A weight that is not finite is an error.
enum class ExportDType { kF32, kBf16, kFp8 };
// "fp32", "bf16" or "fp8"; an error naming `what` (e.g. "export.dtype") otherwise.
Result<ExportDType> ParseExportDType(const std::string& s, const std::string& what);

// Whether an export of a model with config `cfg` can be written in `dtype`: not fp8 for
// gpt_oss. The error says so.
Status ExportSupports(const ModelConfig& cfg, ExportDType dtype);

// Writes config.json and the weights into `dir`, sharded when larger than max_shard_bytes.
// Each file is written atomically. A model with LoRA adapters is written merged (W + scale * B A,
// model/lora.h), without them.
Status SaveHfModel(const Transformer& model, const std::string& dir,
                   ExportDType dtype = ExportDType::kF32, size_t max_shard_bytes = size_t(5) << 30);

// Where SaveHfModelFrom reads the parameters: slab(), in the offsets of the whole model's layout,
// of which unit u's parameters (ParamLayout::units) hold their values from Load(u) until the
// next Load; or every unit's, always, where holds_all().
class ExportParams {
 public:
  virtual ~ExportParams() = default;
  virtual const float* slab() const = 0;
  virtual Status Load(int64_t unit) = 0;
  virtual bool holds_all() const { return false; }
};

// A whole model's slab (every unit, always).
class SlabExportParams : public ExportParams {
 public:
  explicit SlabExportParams(const float* slab) : slab_(slab) {}
  const float* slab() const override { return slab_; }
  Status Load(int64_t) override { return Status::OK(); }
  bool holds_all() const override { return true; }

 private:
  const float* slab_;
};

// SaveHfModel of a model of config `mc` and layout `layout` (the whole model's), whose
// parameters `params` gives: it loads every unit once, in order, and holds, beyond the unit,
// the output shard being filled (SafetensorsShardWriter). The tensors go out unit by unit (a
// GPT-OSS layer's stacked experts after its other tensors).
Status SaveHfModelFrom(const ModelConfig& mc, const ParamLayout& layout, ExportParams& params,
                       const std::string& dir, ExportDType dtype, size_t max_shard_bytes);

}  // namespace xt
