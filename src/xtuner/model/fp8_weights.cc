#include "xtuner/model/fp8_weights.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "xtuner/core/dtype.h"

namespace xt {

namespace {

// "...proj.weight" -> "...proj.weight_scale_inv" (transformers' _scale_pattern_for).
std::string ScaleName(const std::string& weight) { return weight + "_scale_inv"; }

std::string Hex(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", unsigned(b));
  return buf;
}

// The scales of `scale_name` as fp32, shape [grid_rows, grid_cols].
Result<std::vector<float>> ReadScales(const SafetensorsCheckpoint& ckpt,
                                      const std::string& scale_name, const std::string& weight,
                                      int64_t grid_rows, int64_t grid_cols) {
  const std::string where = ckpt.FileOf(scale_name) + ": tensor \"" + scale_name + "\"";
  const Shape grid = {grid_rows, grid_cols};
  XT_ASSIGN_OR_RETURN(SafetensorsInfo info, ckpt.Info(scale_name));
  if (info.shape != grid)
    return Status::Error(where + " has shape " + ShapeString(info.shape) + ", expected " +
                         ShapeString(grid) + ": one scale per block of \"" + weight +
                         "\" (quantization_config.weight_block_size)");
  std::vector<float> s(size_t(grid_rows * grid_cols));
  if (info.dtype == "F8_E8M0" || info.dtype == "U8") {
    const auto* bytes = static_cast<const uint8_t*>(info.data);
    for (size_t i = 0; i < s.size(); ++i) s[i] = Fp8E8m0ToF32(bytes[i]);
  } else {
    Result<Tensor> t = ckpt.GetF32(scale_name, grid);
    if (!t.ok())
      return Status::Error(where + " has dtype " + info.dtype +
                           ", expected F32, BF16, F16 or F64 (or F8_E8M0 / U8 exponent scales)");
    const float* f = t->f32();
    s.assign(f, f + s.size());
  }
  for (size_t i = 0; i < s.size(); ++i)
    if (!std::isfinite(s[i]))
      return Status::Error(where + " holds a scale that is not finite (" + std::to_string(s[i]) +
                           ") at block [" + std::to_string(int64_t(i) / grid_cols) + ", " +
                           std::to_string(int64_t(i) % grid_cols) + "]");
  return s;
}

}  // namespace

Result<Tensor> ReadWeightF32(const SafetensorsCheckpoint& ckpt, const std::string& name,
                             const Shape& shape, const ModelConfig& cfg) {
  XT_ASSIGN_OR_RETURN(SafetensorsInfo info, ckpt.Info(name));
  if (info.dtype != "F8_E4M3") return ckpt.GetF32(name, shape);

  const std::string where = ckpt.FileOf(name) + ": tensor \"" + name + "\"";
  if (!cfg.fp8_weights)
    return Status::Error(where +
                         " is F8_E4M3, but config.json has no FP8 quantization_config "
                         "(quant_method \"fp8\" and its weight_block_size)");
  if (info.shape != shape)
    return Status::Error(where + " has shape " + ShapeString(info.shape) + ", expected " +
                         ShapeString(shape));
  if (shape.size() != 2)
    return Status::Error(where + " is F8_E4M3 with shape " + ShapeString(shape) +
                         ": only 2-D weights [rows, columns] can be block-quantized");
  const std::string scale_name = ScaleName(name);
  if (!ckpt.contains(scale_name)) {
    const std::string per_tensor = name.substr(0, name.size() - 6) + "weight_scale";
    if (name.ends_with("weight") && ckpt.contains(per_tensor))
      return Status::Error(where + " is F8_E4M3 with a per-tensor scale \"" + per_tensor +
                           "\": per-tensor FP8 scales are not implemented (supported: block "
                           "scales, \"" +
                           scale_name + "\")");
    return Status::Error(where + " is F8_E4M3 but the checkpoint has no scale tensor \"" +
                         scale_name + "\"");
  }
  const int64_t rows = shape[0], cols = shape[1];
  const int64_t bm = cfg.fp8_block[0], bn = cfg.fp8_block[1];
  XT_CHECK(bm > 0 && bn > 0);
  const int64_t grid_rows = rows / bm + (rows % bm != 0);  // (no overflow for any row count)
  const int64_t grid_cols = cols / bn + (cols % bn != 0);
  XT_ASSIGN_OR_RETURN(std::vector<float> scales,
                      ReadScales(ckpt, scale_name, name, grid_rows, grid_cols));
  if (rows == 0 || cols == 0) return Tensor::Empty(DType::F32, shape);

  float lut[256];
  for (int b = 0; b < 256; ++b) lut[b] = Fp8E4m3ToF32(uint8_t(b));
  Tensor out = Tensor::Empty(DType::F32, shape);
  float* w = out.f32();
  const auto* q = static_cast<const uint8_t*>(info.data);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scales.data() + (r / bm) * grid_cols;
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t b = q[r * cols + c];
      if ((b & 0x7f) == 0x7f)
        return Status::Error(where + " holds a NaN code (" + Hex(b) + ") at [" + std::to_string(r) +
                             ", " + std::to_string(c) + "]");
      w[r * cols + c] = lut[b] * s[c / bn];
    }
  }
  return out;
}

Status QuantizeFp8(const std::string& name, const float* w, int64_t rows, int64_t cols, int64_t bm,
                   int64_t bn, uint8_t* codes, float* scale_inv) {
  XT_CHECK(bm > 0 && bn > 0 && rows % bm == 0 && cols % bn == 0);
  constexpr float kMax = 448.0f;
  for (int64_t br = 0; br < rows / bm; ++br) {
    for (int64_t bc = 0; bc < cols / bn; ++bc) {
      float amax = 0;
      for (int64_t r = br * bm; r < (br + 1) * bm; ++r)
        for (int64_t c = bc * bn; c < (bc + 1) * bn; ++c) {
          const float a = std::fabs(w[r * cols + c]);
          if (!std::isfinite(a))
            return Status::Error("cannot quantize \"" + name + "\" to FP8: it holds " +
                                 std::to_string(w[r * cols + c]) + " at [" + std::to_string(r) +
                                 ", " + std::to_string(c) + "]");
          amax = std::max(amax, a);
        }
      // torch evaluates 448 / amax as reciprocal(amax) * 448 (Tensor.__rtruediv__). Where that
      // overflows (amax below ~2.9e-39, which torch turns into NaN codes) the largest float.
      const float s = amax > 0 ? std::min((1.0f / amax) * kMax, FLT_MAX) : 1.0f;
      scale_inv[br * (cols / bn) + bc] = 1.0f / s;
      for (int64_t r = br * bm; r < (br + 1) * bm; ++r)
        for (int64_t c = bc * bn; c < (bc + 1) * bn; ++c)
          codes[r * cols + c] = F32ToFp8E4m3(std::clamp(w[r * cols + c] * s, -kMax, kMax));
    }
  }
  return Status::OK();
}

bool Fp8Exportable(const ParamInfo& p, int64_t bm, int64_t bn) {
  if (p.shape.size() != 2 || p.no_grad || p.lora || !p.name.ends_with(".weight")) return false;
  if (p.name == "lm_head.weight" || p.name.find("embed_tokens") != std::string::npos) return false;
  if (p.name.ends_with("mlp.gate.weight") || p.name.ends_with("block_sparse_moe.gate.weight"))
    return false;  // routers
  return p.shape[0] % bm == 0 && p.shape[1] % bn == 0;
}

Fp8ExportPlan PlanFp8Export(const ParamLayout& layout, int64_t bm, int64_t bn) {
  const std::vector<ParamInfo>& params = layout.params();
  // "model.layers.3.mlp.experts.7.down_proj.weight" -> "model.layers.3.mlp.experts"
  auto experts_module = [](const std::string& name) {
    const size_t at = name.find(".experts.");
    return at == std::string::npos ? std::string() : name.substr(0, at + 8);
  };
  std::map<std::string, bool> experts_whole;  // module -> every expert weight exportable
  for (const ParamInfo& p : params) {
    const std::string m = experts_module(p.name);
    if (m.empty()) continue;
    auto it = experts_whole.emplace(m, true).first;
    it->second = it->second && Fp8Exportable(p, bm, bn);
  }
  Fp8ExportPlan plan;
  plan.not_converted.push_back("lm_head");
  plan.quantize.assign(params.size(), false);
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamInfo& p = params[i];
    const std::string m = experts_module(p.name);
    if (!m.empty()) {
      plan.quantize[i] = experts_whole[m];
      if (!experts_whole[m] && std::find(plan.not_converted.begin(), plan.not_converted.end(), m) ==
                                   plan.not_converted.end())
        plan.not_converted.push_back(m);
    } else if (Fp8Exportable(p, bm, bn)) {
      plan.quantize[i] = true;
    } else if (Fp8Exportable(p, 1, 1)) {  // a linear layer that is not whole blocks
      plan.not_converted.push_back(p.name.substr(0, p.name.size() - 7));  // less ".weight"
    }
    plan.any = plan.any || plan.quantize[i];
  }
  return plan;
}

nlohmann::json Fp8QuantizationConfig(int64_t bm, int64_t bn,
                                     const std::vector<std::string>& not_converted) {
  nlohmann::json q = {{"activation_scheme", "dynamic"},
                      {"fmt", "e4m3"},
                      {"quant_method", "fp8"},
                      {"weight_block_size", {bm, bn}}};
  if (!not_converted.empty()) q["modules_to_not_convert"] = not_converted;
  return q;
}

bool IsFp8Companion(const SafetensorsCheckpoint& ckpt, const std::string& name) {
  for (const char* suffix : {"weight_scale_inv", "activation_scale", "input_scale"}) {
    if (!name.ends_with(suffix)) continue;
    const std::string weight = name.substr(0, name.size() - std::string(suffix).size()) + "weight";
    Result<SafetensorsInfo> info = ckpt.Info(weight);  // an error where there is no such weight
    return info.ok() && info->dtype == "F8_E4M3";
  }
  return false;
}

}  // namespace xt
