#include "xtuner/model/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "xtuner/core/file_util.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/fp8_weights.h"

namespace xt {

namespace {
bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

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
                     const std::function<void(const ParamInfo&, const float*)>& visit) {
  XT_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(path));
  for (const ParamInfo& p : layout.params()) {
    if (!ckpt.contains(p.name))
      return Status::Error(path + ": checkpoint has no tensor \"" + p.name + "\" (shape " +
                           ShapeString(p.shape) + ") that a " + cfg.model_type +
                           " model with this config.json needs");
    XT_ASSIGN_OR_RETURN(Tensor t, ReadWeightF32(ckpt, p.name, p.shape, cfg));
    visit(p, t.f32());
  }
  // Tensors of experts another rank holds (a layout with a slice of the experts) are expected.
  const ParamLayout whole(cfg);
  for (const std::string& name : ckpt.names()) {
    if (whole.Find(name)) continue;
    if (EndsWith(name, "rotary_emb.inv_freq") || IsMtpLayerTensor(name, cfg)) continue;
    if (IsFp8Companion(ckpt, name)) continue;  // consumed with its weight, or unused
    if (name == "lm_head.weight" && cfg.tie_word_embeddings) continue;
    return Status::Error(ckpt.FileOf(name) + ": unexpected tensor \"" + name +
                         "\": no parameter of a " + cfg.model_type +
                         " model with this config.json has that name");
  }
  return Status::OK();
}

Status LoadHfWeights(Transformer* model, const std::string& path) {
  float* slab = model->params().f32();
  return ReadHfWeights(path, model->config(), model->layout(),
                       [&](const ParamInfo& p, const float* data) {
                         std::memcpy(slab + p.offset, data, NumElements(p.shape) * sizeof(float));
                       });
}

Result<std::unique_ptr<Transformer>> LoadHfModel(const std::string& dir) {
  XT_ASSIGN_OR_RETURN(ModelConfig cfg, ModelConfig::Load(dir));
  auto model = std::make_unique<Transformer>(std::move(cfg));
  XT_RETURN_IF_ERROR(LoadHfWeights(model.get(), dir));
  return model;
}

Status SaveHfModel(const Transformer& model, const std::string& dir, bool bf16,
                   size_t max_shard_bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Error(dir + ": cannot create directory: " + ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  const float* slab = model.params().f32();
  for (const ParamInfo& p : model.layout().params()) {
    Tensor t = Tensor::Wrap(DType::F32, p.shape, const_cast<float*>(slab + p.offset), nullptr);
    // Buffers stay F32 (transformers keeps DeepSeek-V3's correction bias in fp32: its small
    // per-step moves would round away in bf16).
    tensors.emplace_back(p.name, bf16 && !p.no_grad ? t.To(DType::BF16) : t);
  }
  XT_RETURN_IF_ERROR(WriteSafetensorsSharded(dir, tensors, max_shard_bytes));
  nlohmann::json cfg = model.config().ToJson();
  cfg["dtype"] = bf16 ? "bfloat16" : "float32";
  return WriteFileAtomically((fs::path(dir) / "config.json").string(), cfg.dump(2) + "\n");
}

}  // namespace xt
