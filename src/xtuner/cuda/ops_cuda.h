// CUDA twins of ops/ops.h: the same contracts, on device pointers, queued on `stream` (a
// cudaStream_t; null: the default stream). Each returns the launch's error, if any.
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"

namespace xt::cuda {

// out (N, C) = in * rstd * w, rstd (N) = 1 / sqrt(mean(in^2) + eps): ops::rmsnorm_forward.
// One block per row; the sum of squares in fp32 across the block's threads (the CPU twin sums in
// double: they agree to about 1e-6 relative).
Status RmsnormForward(float* out, float* rstd, const float* in, const float* w, int64_t N,
                      int64_t C, float eps, void* stream = nullptr);

}  // namespace xt::cuda
