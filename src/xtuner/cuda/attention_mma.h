// The bf16 attention's mma kernels (internal to the bf16 attention: attention_bf16.cu and
// attention_bf16_backward.cu call them for AttentionBf16Kernels::kMma; the scheme is in
// attention_mma_tiles.h). They take what those launchers prepared: the block lists on the device
// (by_q, by_kv: nb blocks each, attention_blocks.h), the bf16 copies of the inputs (16-byte
// aligned, as Bf16Copies makes them) and, for the backward, delta (T, Hq) fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "xtuner/core/status.h"
#include "xtuner/cuda/attention_blocks.h"

namespace xt::cuda::detail {

// out (T, Hq, D), lse (T, Hq) from q (T, Hq, D), k, v (T, Hkv, D).
Status LaunchForwardMma(float* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                        const __nv_bfloat16* v, const Block* by_q, int64_t nb, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, cudaStream_t st);

// dq (T, Hq, D), dk, dv (T, Hkv, D) from dout (bf16), lse and delta (fp32), q, k, v (bf16).
Status LaunchBackwardMma(float* dq, float* dk, float* dv, const __nv_bfloat16* dout,
                         const float* lse, const float* delta, const __nv_bfloat16* q,
                         const __nv_bfloat16* k, const __nv_bfloat16* v, const Block* by_q,
                         const Block* by_kv, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D,
                         float scale, cudaStream_t st);

}  // namespace xt::cuda::detail
