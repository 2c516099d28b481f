// Block-quantized FP8 weights: reading a checkpoint's weights as fp32 (dequantizing the FP8
// ones), and quantizing weights for an FP8 export.
//
// An FP8 checkpoint (ModelConfig::fp8_weights: quantization_config {"quant_method": "fp8",
// "weight_block_size": [bm, bn]}, as DeepSeek-V3's and Qwen3's "-FP8" releases ship) stores a
// weight W [R, C] as F8_E4M3 codes Q beside a scale tensor S named as W with "weight" replaced by
// "weight_scale_inv", of shape [ceil(R / bm), ceil(C / bn)] (F32, BF16 or F16; F8_E8M0 or U8
// for "ue8m0" scales, 2^(byte - 127)). Then
//   W[r][c] = fp32(Q[r][c]) * S[r / bm][c / bn]        (one fp32 rounding)
// The last block of a row or column may be partial: DeepSeek-V3's kv_a_proj_with_mqa has 576
// rows in 5 blocks of 128. This is DeepSeek's own dequantization kernel (weight_dequant); on
// shapes that are whole blocks it is also transformers' (FineGrainedFP8Config(dequantize=True)),
// which refuses or re-blocks the others. Tensors in any other float dtype (norms, embeddings,
// the router: modules_to_not_convert) are read as they are.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "xtuner/core/safetensors.h"
#include "xtuner/core/status.h"
#include "xtuner/core/tensor.h"
#include "xtuner/model/config.h"
#include "xtuner/model/params.h"

namespace xt {

// The tensor `name` of `ckpt` as a new fp32 tensor of shape `shape`. Errors name the file and
// the tensor: wrong shape; a dtype that is not a float; an F8_E4M3 tensor in a checkpoint whose
// config.json has no FP8 quantization_config, that is not 2-D, has no scale tensor or one of the
// wrong shape or dtype; a NaN code (0x7f, 0xff) in the weights or a scale that is not finite.
Result<Tensor> ReadWeightF32(const SafetensorsCheckpoint& ckpt, const std::string& name,
                             const Shape& shape, const ModelConfig& cfg);

// Export: the per-block arithmetic of transformers' Fp8Quantize on one weight `name`
// w [rows, cols], rows and cols multiples of the block bm x bn. Per block, in fp32:
// amax = max |w|, s = (1 / amax) * 448 (torch's order of 448 / amax; 1 where amax is 0; the
// largest float where that overflows, which torch would turn into NaN codes),
// codes = E4M3(clamp(w * s, -448, 448)) (nearest, ties to even), weight_scale_inv = 1 / s.
// codes: rows * cols; scale_inv: (rows / bm) * (cols / bn). An error, naming `name` and the
// element, for a weight that is not finite.
Status QuantizeFp8(const std::string& name, const float* w, int64_t rows, int64_t cols, int64_t bm,
                   int64_t bn, uint8_t* codes, float* scale_inv);

// Whether parameter `p` is a weight an FP8 export may quantize in blocks of bm x bn: a 2-D
// linear weight (attention, MLP, experts, shared experts: not the embeddings, lm_head, norms or
// routers, as in the hub's -FP8 releases) that is a whole number of blocks (transformers'
// dequantization cannot read a partial block).
bool Fp8Exportable(const ParamInfo& p, int64_t bm, int64_t bn);

// What an FP8 export of `layout` quantizes: quantize[i] for layout.params()[i]. A layer's
// experts are quantized all or none (transformers loads them as one module,
// "model.layers.N.mlp.experts"). not_converted: "lm_head", then every linear module left in
// bf16 (whole "...experts" modules among them), for quantization_config.modules_to_not_convert,
// which transformers needs to load them. any: whether anything is quantized.
struct Fp8ExportPlan {
  std::vector<bool> quantize;
  std::vector<std::string> not_converted;
  bool any = false;
};
Fp8ExportPlan PlanFp8Export(const ParamLayout& layout, int64_t bm, int64_t bn);

// The quantization_config of an FP8 checkpoint in blocks of bm x bn (quant_method "fp8", fmt
// "e4m3", activation_scheme "dynamic"), with modules_to_not_convert when not_converted has any.
nlohmann::json Fp8QuantizationConfig(int64_t bm, int64_t bn,
                                     const std::vector<std::string>& not_converted);

// Whether `name` is a companion of an F8_E4M3 weight in `ckpt` that dequantization consumes or
// ignores: its weight_scale_inv, or the activation_scale / input_scale of a static activation
// scheme (activations are not quantized here).
bool IsFp8Companion(const SafetensorsCheckpoint& ckpt, const std::string& name);

}  // namespace xt
