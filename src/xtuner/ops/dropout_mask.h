// The dropout masks of LoRA's adapters (model/linear.h), drawn by hashing rather than by a
// generator's stream: element (t, c) of a (T, C) input is kept or dropped by a fixed function of
// its token's key (Batch::noise), the mask's salt (one per adapter) and c. So the CPU
// (ops::dropout_mask) and the GPU (cuda::DropoutMask) draw the same mask, a recomputed layer
// draws it again without storing it, and a token draws the same mask whichever micro-batch, rank
// or mesh carries it. The function is SplitMix64's finaliser (core/rng.h); not cryptographic.
// Plain C++17, __host__ __device__ under nvcc.
#pragma once

#include <cstdint>

#include "xtuner/ops/host_device.h"

namespace xt::ops {

XT_HOST_DEVICE inline uint64_t dropout_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The mask's key for one token: its noise key and the mask's salt.
XT_HOST_DEVICE inline uint64_t dropout_row_key(uint64_t token_key, uint64_t salt) {
  return dropout_mix(token_key ^ dropout_mix(salt + 0x9e3779b97f4a7c15ull));
}

// Whether element c of the token whose row key is `row_key` is kept: true with probability
// 1 - threshold / 2^32 (dropout_threshold).
XT_HOST_DEVICE inline bool dropout_keep(uint64_t row_key, int64_t c, uint32_t threshold) {
  const uint64_t z = dropout_mix(row_key + uint64_t(c) * 0x9e3779b97f4a7c15ull);
  return uint32_t(z >> 32) >= threshold;
}

// The threshold that drops with probability p in [0, 1): floor(p * 2^32).
inline uint32_t dropout_threshold(double p) { return uint32_t(p * 4294967296.0); }

}  // namespace xt::ops
