#include "xtuner/model/gpt_oss_experts.h"

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "xtuner/model/lora.h"
#include "xtuner/model/mxfp4.h"

namespace xt {

namespace {

const char* const kSuffix[] = {"gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"};

// The index in [0, limit) spelled at s[*i...] as the writer spells it (digits, no leading zero:
// "01" is not 1); *i moves past it. False when there is none.
bool ParseIndex(const std::string& s, size_t* i, int64_t limit, int64_t* out) {
  const size_t first = *i;
  int64_t v = 0;
  while (*i < s.size() && s[*i] >= '0' && s[*i] <= '9' && v < limit) v = v * 10 + (s[(*i)++] - '0');
  if (*i == first || v >= limit || (s[first] == '0' && *i - first > 1)) return false;
  *out = v;
  return true;
}

// "model.layers.<L>.mlp.experts." and the rest of `name` after it, or nothing.
bool SplitLayer(const std::string& name, int64_t num_layers, int64_t* layer, std::string* rest) {
  const std::string prefix = "model.layers.", mid = ".mlp.experts.";
  if (name.rfind(prefix, 0) != 0) return false;
  size_t i = prefix.size();
  if (!ParseIndex(name, &i, num_layers, layer) || name.compare(i, mid.size(), mid) != 0)
    return false;
  *rest = name.substr(i + mid.size());
  return true;
}

// The stacked hub shape of a kind.
Shape StackedShape(const ModelConfig& c, GptOssExpertSlice::Kind kind) {
  const int64_t E = c.num_experts, H = c.hidden_size, I = c.moe_intermediate_size;
  switch (kind) {
    case GptOssExpertSlice::kGateUp:
      return {E, H, 2 * I};
    case GptOssExpertSlice::kDown:
      return {E, I, H};
    case GptOssExpertSlice::kGateUpBias:
      return {E, 2 * I};
    case GptOssExpertSlice::kDownBias:
      return {E, H};
  }
  return {};
}

// Engine row r of a [gate | up] (2I) axis <-> hub column of the interleaved axis.
int64_t Interleaved(int64_t r, int64_t I) { return r < I ? 2 * r : 2 * (r - I) + 1; }

// dst (engine layout) from src (one expert's hub slice, fp32), or the reverse when to_hub.
void Convert(GptOssExpertSlice::Kind kind, int64_t H, int64_t I, const float* src, float* dst,
             bool to_hub) {
  switch (kind) {
    case GptOssExpertSlice::kGateUp:  // hub (H, 2I) interleaved <-> engine (2I, H)
      for (int64_t r = 0; r < 2 * I; ++r)
        for (int64_t h = 0; h < H; ++h) {
          const int64_t hub = h * 2 * I + Interleaved(r, I), eng = r * H + h;
          if (to_hub) {
            dst[hub] = src[eng];
          } else {
            dst[eng] = src[hub];
          }
        }
      return;
    case GptOssExpertSlice::kDown:  // hub (I, H) <-> engine (H, I)
      for (int64_t i = 0; i < I; ++i)
        for (int64_t h = 0; h < H; ++h) {
          if (to_hub) {
            dst[i * H + h] = src[h * I + i];
          } else {
            dst[h * I + i] = src[i * H + h];
          }
        }
      return;
    case GptOssExpertSlice::kGateUpBias:  // hub (2I) interleaved <-> engine (2I)
      for (int64_t r = 0; r < 2 * I; ++r) {
        if (to_hub) {
          dst[Interleaved(r, I)] = src[r];
        } else {
          dst[r] = src[Interleaved(r, I)];
        }
      }
      return;
    case GptOssExpertSlice::kDownBias:
      std::memcpy(dst, src, H * sizeof(float));
      return;
  }
}

}  // namespace

std::optional<GptOssExpertSlice> GptOssExpertOf(const ModelConfig& cfg, const std::string& name) {
  if (cfg.arch != Arch::kGptOss) return std::nullopt;
  int64_t layer = 0;
  std::string rest;
  if (!SplitLayer(name, cfg.num_layers, &layer, &rest)) return std::nullopt;
  size_t i = 0;
  int64_t e = 0;
  if (!ParseIndex(rest, &i, cfg.num_experts, &e) || i >= rest.size() || rest[i] != '.')
    return std::nullopt;
  const std::string kind = rest.substr(i + 1);
  for (int k = 0; k < 4; ++k)
    if (kind == kSuffix[k])
      return GptOssExpertSlice{"model.layers." + std::to_string(layer) + ".mlp.experts." + kind, e,
                               GptOssExpertSlice::Kind(k)};
  return std::nullopt;
}

bool IsGptOssStackedExpertTensor(const ModelConfig& cfg, const std::string& name) {
  if (cfg.arch != Arch::kGptOss) return false;
  int64_t layer = 0;
  std::string rest;
  if (!SplitLayer(name, cfg.num_layers, &layer, &rest)) return false;
  for (const char* s : kSuffix)
    if (rest == s) return true;
  if (cfg.mxfp4_experts)
    for (const char* s : {"gate_up_proj", "down_proj"})
      for (const char* part : {"_blocks", "_scales"})
        if (rest == std::string(s) + part) return true;
  return false;
}

namespace {

// Expert s.expert's weight from the MXFP4 `<hub>_blocks` and `<hub>_scales` of `ckpt`, into
// `out` (the engine's layout of p).
Status ReadMxfp4Expert(const SafetensorsCheckpoint& ckpt, const ModelConfig& cfg,
                       const GptOssExpertSlice& s, float* out) {
  const int64_t E = cfg.num_experts, H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  const bool gate_up = s.kind == GptOssExpertSlice::kGateUp;
  const int64_t rows = gate_up ? 2 * I : H, in = gate_up ? H : I;
  const std::string blocks_name = s.hub + "_blocks", scales_name = s.hub + "_scales";
  const std::string where = ckpt.FileOf(blocks_name) + ": ";
  if (in % 32 != 0)
    return Status::Error(where + "MXFP4 tensor \"" + blocks_name + "\" needs " +
                         (gate_up ? "hidden_size" : "intermediate_size") +
                         " to be a multiple of 32, found " + std::to_string(in));
  const int64_t groups = in / 32;
  if (!ckpt.contains(scales_name))
    return Status::Error(where + "checkpoint has \"" + blocks_name + "\" but no \"" + scales_name +
                         "\" (shape " + ShapeString({E, rows, groups}) + ")");
  XT_ASSIGN_OR_RETURN(SafetensorsInfo b, ckpt.Info(blocks_name));
  XT_ASSIGN_OR_RETURN(SafetensorsInfo sc, ckpt.Info(scales_name));
  for (auto [name, info, want] : {std::tuple{&blocks_name, &b, Shape{E, rows, groups, 16}},
                                  {&scales_name, &sc, Shape{E, rows, groups}}}) {
    const std::string file = ckpt.FileOf(*name) + ": ";
    if (info->dtype != "U8")
      return Status::Error(file + "MXFP4 tensor \"" + *name + "\" has dtype " + info->dtype +
                           ", expected U8");
    if (info->shape != want)
      return Status::Error(file + "MXFP4 tensor \"" + *name + "\" has shape " +
                           ShapeString(info->shape) + ", expected " + ShapeString(want) +
                           " from config.json");
  }
  const uint8_t* blocks = static_cast<const uint8_t*>(b.data) + s.expert * rows * groups * 16;
  const uint8_t* scales = static_cast<const uint8_t*>(sc.data) + s.expert * rows * groups;
  for (int64_t i = 0; i < rows * groups; ++i)
    if (scales[i] == 255)
      return Status::Error(ckpt.FileOf(scales_name) + ": MXFP4 tensor \"" + scales_name +
                           "\": expert " + std::to_string(s.expert) +
                           " has scale byte 255 (NaN) at row " + std::to_string(i / groups));
  std::vector<float> decoded(rows * in);  // (rows, in), the hub's output rows
  DecodeMxfp4(blocks, scales, rows, groups, decoded.data());
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = decoded.data() + (gate_up ? Interleaved(r, I) : r) * in;
    for (int64_t c = 0; c < in; ++c) {
      if (!std::isfinite(src[c]))
        return Status::Error(where + "MXFP4 tensor \"" + blocks_name + "\": expert " +
                             std::to_string(s.expert) + " decodes to " + std::to_string(src[c]) +
                             " at row " + std::to_string(gate_up ? Interleaved(r, I) : r) +
                             ", column " + std::to_string(c));
      out[r * in + c] = src[c];
    }
  }
  return Status::OK();
}

}  // namespace

Result<Tensor> ReadGptOssExpert(const SafetensorsCheckpoint& ckpt, const ModelConfig& cfg,
                                const GptOssExpertSlice& s, const ParamInfo& p) {
  const std::string where = (ckpt.contains(s.hub) ? ckpt.FileOf(s.hub) : ckpt.path()) + ": ";
  if ((s.kind == GptOssExpertSlice::kGateUp || s.kind == GptOssExpertSlice::kDown) &&
      cfg.mxfp4_experts) {
    const bool blocks = ckpt.contains(s.hub + "_blocks"), plain = ckpt.contains(s.hub);
    if (blocks && plain)
      return Status::Error(where + "checkpoint holds both \"" + s.hub + "\" and \"" + s.hub +
                           "_blocks\" (MXFP4): which is meant is unclear");
    if (!blocks && ckpt.contains(s.hub + "_scales"))
      return Status::Error(ckpt.FileOf(s.hub + "_scales") + ": checkpoint has \"" + s.hub +
                           "_scales\" but no \"" + s.hub + "_blocks\"");
    if (blocks) {
      Tensor out = Tensor::Empty(DType::F32, p.shape);
      XT_RETURN_IF_ERROR(ReadMxfp4Expert(ckpt, cfg, s, out.f32()));
      return out;
    }
    if (!plain)
      return Status::Error(where + "checkpoint has neither \"" + s.hub +
                           "_blocks\" (MXFP4) nor \"" + s.hub +
                           "\" that a gpt_oss model with this config.json needs");
  }
  if (!ckpt.contains(s.hub))
    return Status::Error(where + "checkpoint has no tensor \"" + s.hub + "\" (shape " +
                         ShapeString(StackedShape(cfg, s.kind)) + ") that a gpt_oss model with " +
                         "this config.json needs");
  XT_ASSIGN_OR_RETURN(SafetensorsInfo info, ckpt.Info(s.hub));
  const Shape want = StackedShape(cfg, s.kind);
  if (info.shape != want)
    return Status::Error(where + "tensor \"" + s.hub + "\" has shape " + ShapeString(info.shape) +
                         ", expected " + ShapeString(want) + " from config.json");
  if (info.dtype != "F32" && info.dtype != "BF16" && info.dtype != "F16")
    return Status::Error(where + "tensor \"" + s.hub + "\" has dtype " + info.dtype +
                         " (supported: F32, BF16, F16; or MXFP4 as _blocks and _scales, with "
                         "quant_method \"mxfp4\")");
  XT_ASSIGN_OR_RETURN(Tensor stacked, ckpt.Get(s.hub));
  const int64_t per = NumElements(p.shape);
  const size_t elem = DTypeSize(stacked.dtype());
  char* base =
      static_cast<char*>(const_cast<void*>(stacked.data())) + size_t(s.expert * per) * elem;
  Tensor slice = Tensor::Wrap(stacked.dtype(), {per}, base, nullptr).To(DType::F32);
  Tensor out = Tensor::Empty(DType::F32, p.shape);
  Convert(s.kind, cfg.hidden_size, cfg.moe_intermediate_size, slice.f32(), out.f32(),
          /*to_hub=*/false);
  return out;
}

std::vector<std::pair<std::string, Tensor>> GptOssStackedExperts(const ModelConfig& cfg,
                                                                 const ParamLayout& layout,
                                                                 const float* slab, DType dtype,
                                                                 bool merge_lora, int64_t layer) {
  std::vector<std::pair<std::string, Tensor>> out;
  if (cfg.arch != Arch::kGptOss) return out;
  const int64_t E = cfg.num_experts, H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  XT_CHECK(layout.expert_begin == 0 && layout.expert_count == E,
           "GptOssStackedExperts needs the whole model's layout");
  for (int64_t l = layer >= 0 ? layer : 0; l < (layer >= 0 ? layer + 1 : cfg.num_layers); ++l) {
    const LayerOffsets& o = layout.layers[l];
    const std::string prefix = "model.layers." + std::to_string(l) + ".mlp.experts.";
    for (auto [kind, offset, per] : {std::tuple{GptOssExpertSlice::kGateUp, o.gate_up, 2 * I * H},
                                     {GptOssExpertSlice::kGateUpBias, o.gate_up_bias, 2 * I},
                                     {GptOssExpertSlice::kDown, o.down, H * I},
                                     {GptOssExpertSlice::kDownBias, o.down_bias, H}}) {
      Tensor t = Tensor::Empty(DType::F32, StackedShape(cfg, kind));
      for (int64_t e = 0; e < E; ++e) {
        const float* w = slab + offset + e * per;
        Tensor merged;  // the expert's weight with its adapter merged, one at a time
        const ParamInfo* info =
            merge_lora ? layout.Find(prefix + std::to_string(e) + "." + kSuffix[kind]) : nullptr;
        if (info && MergeLora(layout, cfg, slab, *info, &merged)) w = merged.f32();
        Convert(kind, H, I, w, t.f32() + e * per, /*to_hub=*/true);
      }
      out.emplace_back(prefix + kSuffix[kind], dtype == DType::F32 ? std::move(t) : t.To(dtype));
    }
  }
  return out;
}

}  // namespace xt
