#include "xtuner/model/checkpoint.h"

#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/mapped_file.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/fp8_weights.h"
#include "xtuner/model/gpt_oss_experts.h"
#include "xtuner/model/lora.h"

namespace xt {

namespace fs = std::filesystem;

namespace {
// DeepSeek-V3's multi-token-prediction layers (model.layers.L .. L + n - 1 after the L decoder
// layers) ride along in its checkpoints; transformers skips them on load, and so do we.
bool IsMtpLayerTensor(const std::string& name, const ModelConfig& cfg) {
  const std::string prefix = "model.layers.";
  if (cfg.num_nextn_predict_layers <= 0 || name.rfind(prefix, 0) != 0) return false;
  size_t end = prefix.size();
  int64_t layer = 0;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9' && layer < (int64_t(1) << 40))
    layer = layer * 10 + (name[end++] - '0');
  if (end == prefix.size() || end >= name.size() || name[end] != '.') return false;
  return layer >= cfg.num_layers && layer < cfg.num_layers + cfg.num_nextn_predict_layers;
}
}  // namespace

Status ReadHfWeights(const std::string& path, const ModelConfig& cfg, const ParamLayout& layout,
                     const std::function<void(const ParamInfo&, const float*)>& visit,
                     const std::function<bool(const ParamInfo&)>& only) {
  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(path));
  for (const ParamInfo& p : layout.params()) {
    if (p.lora) continue;  // LoRA adapters come from an adapter or their initialisation
    if (only && !only(p)) continue;
    if (!ckpt.contains(p.name) && !GptOssExpertOf(cfg, p.name))
      return Status::Error(path + ": checkpoint has no tensor \"" + p.name + "\" (shape " +
                           ShapeString(p.shape) + ") that a " + cfg.model_type +
                           " model with this config.json needs");
    if (std::optional<GptOssExpertSlice> slice = GptOssExpertOf(cfg, p.name)) {
      XT_ASSIGN_OR_RETURN(Tensor t, ReadGptOssExpert(ckpt, cfg, *slice, p));
      visit(p, t.f32());
      continue;
    }
    XT_ASSIGN_OR_RETURN(Tensor t, ReadWeightF32(ckpt, p.name, p.shape, cfg));
    visit(p, t.f32());
  }
  // Tensors of experts another rank holds (a layout with a slice of the experts) are expected.
  const ParamLayout whole(cfg);
  for (const std::string& name : ckpt.names()) {
    // (GPT-OSS's per-expert layout names are the engine's own: not in its checkpoints.)
    if (whole.Find(name) && !GptOssExpertOf(cfg, name)) continue;
    if (IsGptOssStackedExpertTensor(cfg, name)) continue;
    if (name.ends_with("rotary_emb.inv_freq") || IsMtpLayerTensor(name, cfg)) continue;
    if (IsFp8Companion(ckpt, name)) continue;  // consumed with its weight, or unused
    if (name == "lm_head.weight" && cfg.tie_word_embeddings) continue;
    return Status::Error(ckpt.FileOf(name) + ": unexpected tensor \"" + name +
                         "\": no parameter of a " + cfg.model_type +
                         " model with this config.json has that name");
  }
  return Status::OK();
}

Result<std::string> HfWeightsFingerprint(const std::string& path) {
  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(path));
  std::set<std::string> files;
  for (const std::string& name : ckpt.names()) files.insert(ckpt.FileOf(name));
  XXH3_state_t* h = XXH3_createState();
  XT_CHECK(h != nullptr, "out of memory");
  XXH3_128bits_reset(h);
  for (const std::string& file : files) {
    auto mapped = MappedFile::Open(file, "checkpoint file");
    if (!mapped.ok()) {
      XXH3_freeState(h);
      return mapped.status();
    }
    const uint8_t* d = (*mapped)->data();
    const uint64_t size = (*mapped)->size();
    const std::string base = fs::path(file).filename().string();
    XXH3_128bits_update(h, base.data(), base.size());
    XXH3_128bits_update(h, &size, sizeof size);
    constexpr uint64_t kHead = 1 << 20, kSample = 64 << 10;
    XXH3_128bits_update(h, d, std::min(size, kHead));
    if (size > kSample)
      for (uint64_t i = 0; i < 16; ++i)
        XXH3_128bits_update(h, d + i * (size - kSample) / 15, kSample);
  }
  const XXH128_hash_t v = XXH3_128bits_digest(h);
  XXH3_freeState(h);
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", (unsigned long long)v.high64,
                (unsigned long long)v.low64);
  return std::string(hex);
}

Status LoadHfWeights(Transformer* model, const std::string& path) {
  float* slab = model->params().f32();
  return ReadHfWeights(path, model->config(), model->layout(),
                       [&](const ParamInfo& p, const float* data) {
                         std::memcpy(slab + p.offset, data, NumElements(p.shape) * sizeof(float));
                       });
}

Result<std::unique_ptr<Transformer>> LoadHfModel(const std::string& dir,
                                                 const std::string& adapter) {
  XT_ASSIGN_OR_RETURN(ModelConfig cfg, ModelConfig::Load(dir));
  if (!adapter.empty()) {
    XT_ASSIGN_OR_RETURN(cfg.lora, LoraSpecOfAdapter(adapter, cfg));
  }
  auto model = std::make_unique<Transformer>(std::move(cfg));
  XT_RETURN_IF_ERROR(LoadHfWeights(model.get(), dir));
  if (adapter.empty()) return model;
  float* slab = model->params().f32();
  XT_RETURN_IF_ERROR(ReadLoraAdapter(
      adapter, model->config(), model->layout(), [&](const ParamInfo& p, const float* data) {
        std::memcpy(slab + p.offset, data, NumElements(p.shape) * sizeof(float));
      }));
  return model;
}

Result<ExportDType> ParseExportDType(const std::string& s, const std::string& what) {
  if (s == "fp32") return ExportDType::kF32;
  if (s == "bf16") return ExportDType::kBf16;
  if (s == "fp8") return ExportDType::kFp8;
  return Status::Error(what + " must be bf16, fp32 or fp8, not " + s);
}

Status ExportSupports(const ModelConfig& cfg, ExportDType dtype) {
  if (dtype == ExportDType::kFp8 && cfg.arch == Arch::kGptOss)
    return Status::Error(
        "an fp8 export of gpt_oss is not implemented (its experts are stacked tensors that "
        "transformers' FP8 loader does not read): export bf16 or fp32");
  return Status::OK();
}

Status SaveHfModel(const Transformer& model, const std::string& dir, ExportDType dtype,
                   size_t max_shard_bytes) {
  SlabExportParams whole(model.params().f32());
  return SaveHfModelFrom(model.config(), model.layout(), whole, dir, dtype, max_shard_bytes);
}

Status SaveHfModelFrom(const ModelConfig& mc, const ParamLayout& layout, ExportParams& source,
                       const std::string& dir, ExportDType dtype, size_t max_shard_bytes) {
  XT_RETURN_IF_ERROR(ExportSupports(mc, dtype));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Error(dir + ": cannot create directory: " + ec.message());
  const int64_t bm = mc.fp8_weights ? mc.fp8_block[0] : 128;
  const int64_t bn = mc.fp8_weights ? mc.fp8_block[1] : 128;
  Fp8ExportPlan fp8;
  if (dtype == ExportDType::kFp8) fp8 = PlanFp8Export(layout, bm, bn);
  const bool merge = mc.lora.enabled();
  SafetensorsShardWriter writer(dir, max_shard_bytes);
  const std::vector<ParamInfo>& params = layout.params();
  const int64_t units = int64_t(layout.units().size());
  size_t i = 0;
  for (int64_t u = 0; u < units; ++u) {
    XT_RETURN_IF_ERROR(source.Load(u));
    const float* slab = source.slab();
    // The unit's parameters (the last unit: the rest).
    for (; i < params.size() && (u + 1 == units || params[i].offset < layout.units()[u + 1].begin);
         ++i) {
      const ParamInfo& p = params[i];
      if (p.lora) continue;                      // merged into their weights
      if (GptOssExpertOf(mc, p.name)) continue;  // stacked below
      Tensor t = Tensor::Wrap(DType::F32, p.shape, const_cast<float*>(slab + p.offset), nullptr);
      if (Tensor merged; merge && MergeLora(layout, mc, slab, p, &merged)) t = merged;
      // Buffers stay F32 (transformers keeps DeepSeek-V3's correction bias in fp32: its small
      // per-step moves would round away in bf16). A view of the slab outlives its unit only
      // where the slab holds every unit.
      if (dtype == ExportDType::kF32 || p.no_grad) {
        XT_RETURN_IF_ERROR(
            writer.Add(p.name, t.data() == slab + p.offset && !source.holds_all() ? t.Clone() : t));
      } else if (dtype == ExportDType::kFp8 && fp8.quantize[i]) {
        Tensor codes = Tensor::Empty(DType::F8E4M3, p.shape);
        Tensor scale = Tensor::Empty(DType::F32, {p.shape[0] / bm, p.shape[1] / bn});
        XT_RETURN_IF_ERROR(QuantizeFp8(p.name, t.f32(), p.shape[0], p.shape[1], bm, bn,
                                       static_cast<uint8_t*>(codes.data()), scale.f32()));
        XT_RETURN_IF_ERROR(writer.Add(p.name, std::move(codes)));
        XT_RETURN_IF_ERROR(writer.Add(p.name + "_scale_inv", std::move(scale)));
      } else {
        XT_RETURN_IF_ERROR(writer.Add(p.name, t.To(DType::BF16)));
      }
    }
    // GPT-OSS's experts of the layer, stacked (with adapters on them, merged expert by expert).
    if (u >= ParamLayout::LayerUnit(0) && u < layout.head_unit())
      for (auto& [name, t] : GptOssStackedExperts(
               mc, layout, slab, dtype == ExportDType::kF32 ? DType::F32 : DType::BF16, merge,
               u - ParamLayout::LayerUnit(0)))
        XT_RETURN_IF_ERROR(writer.Add(name, std::move(t)));
  }
  XT_RETURN_IF_ERROR(writer.Finish());
  nlohmann::json cfg = mc.ToJson();
  cfg["dtype"] = dtype == ExportDType::kF32 ? "float32" : "bfloat16";
  if (fp8.any) cfg["quantization_config"] = Fp8QuantizationConfig(bm, bn, fp8.not_converted);
  return WriteFileAtomically((fs::path(dir) / "config.json").string(), DumpJson(cfg, 2) + "\n");
}

}  // namespace xt
