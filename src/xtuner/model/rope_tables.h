// HF's default RoPE tables for a batch: inv_freq[i] = 1 / theta^(2i/D), angle = position *
// inv_freq, cos and sin in fp32, as transformers computes them. Shared by the CPU model and the
// CUDA model (which uploads them).
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/model/batch.h"

namespace xt {

// cos, sin (T, D/2) for the batch's positions.
void ComputeRopeTables(const Batch& b, int64_t head_dim, double rope_theta, std::vector<float>* cos,
                       std::vector<float>* sin);

}  // namespace xt
