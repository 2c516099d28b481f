// HF's RoPE tables for a batch, as transformers computes them in fp32: inv_freq[i] =
// 1 / theta^(2i/D) over the rotated width D (ModelConfig::rope_dim), or YaRN's blend of those
// with their interpolation by `factor` (transformers' _compute_yarn_parameters); angle =
// position * inv_freq; cos and sin, times YaRN's attention_factor. Shared by the CPU model and
// the CUDA model (which uploads them).
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/model/batch.h"
#include "xtuner/model/config.h"

namespace xt {

// inv_freq (D/2) of the model's RoPE.
std::vector<float> RopeInvFreq(const ModelConfig& cfg);

// cos, sin (T, D/2) for the batch's positions.
void ComputeRopeTables(const Batch& b, const ModelConfig& cfg, std::vector<float>* cos,
                       std::vector<float>* sin);

}  // namespace xt
