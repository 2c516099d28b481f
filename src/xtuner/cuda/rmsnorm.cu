#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row: a block-wide sum of squares, then the scaled row.
__global__ void RmsnormForwardKernel(float* out, float* rstd, const float* in, const float* w,
                                     int64_t C, float eps) {
  const int64_t n = blockIdx.x;
  const float* x = in + n * C;
  float* y = out + n * C;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += x[c] * x[c];
  __shared__ float partial[kThreads];
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float r = rsqrtf(partial[0] / float(C) + eps);
  if (threadIdx.x == 0) rstd[n] = r;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) y[c] = x[c] * r * w[c];
}

}  // namespace

Status RmsnormForward(float* out, float* rstd, const float* in, const float* w, int64_t N,
                      int64_t C, float eps, void* stream) {
  if (N == 0) return Status::OK();
  XT_LAUNCH(RmsnormForwardKernel, unsigned(N), kThreads, 0, cudaStream_t(stream))
  (out, rstd, in, w, C, eps);
  return Check(cudaGetLastError(), "rmsnorm_forward launch");
}

}  // namespace xt::cuda
