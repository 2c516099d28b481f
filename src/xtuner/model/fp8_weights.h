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

#include <string>

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

// Export: transformers' Fp8Quantize (the reverse of its FP8 load) on one weight w [rows, cols],
// rows and cols multiples of the block bm x bn. Per block, in fp32: amax = max |w|,
// s = (1 / amax) * 448 (1 where amax is 0; torch's order of 448 / amax), codes = E4M3(clamp(w * s,
// -448, 448)) (nearest, ties to even), weight_scale_inv = 1 / s. codes: rows * cols; scale_inv:
// (rows / bm) * (cols / bn).
void QuantizeFp8(const float* w, int64_t rows, int64_t cols, int64_t bm, int64_t bn, uint8_t* codes,
                 float* scale_inv);

// Whether an FP8 export quantizes parameter `p` in blocks of bm x bn: a 2-D linear weight
// (attention, MLP, experts, shared experts: not the embeddings, lm_head, norms or router, as the
// hub's -FP8 releases) that is a whole number of blocks (transformers leaves the others as
// they are; its loader cannot read a partial block).
bool Fp8Exportable(const ParamInfo& p, int64_t bm, int64_t bn);

// Whether `name` is a companion of an F8_E4M3 weight in `ckpt` that dequantization consumes or
// ignores: its weight_scale_inv, or the activation_scale / input_scale of a static activation
// scheme (activations are not quantized here).
bool IsFp8Companion(const SafetensorsCheckpoint& ckpt, const std::string& name);

}  // namespace xt
