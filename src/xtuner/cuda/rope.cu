// RoPE in the HF rotate_half layout (ops::rope_forward / rope_backward on the GPU), in place:
// one thread per pair (i, i + D/2) of one head of one token, grid-strided, int64 indices.
#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

// sign = +1 rotates by +angle (forward), -1 by -angle (the transpose, for backward): the CPU
// twin's expressions, with si = sign * s exact.
__global__ void RopeKernel(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn,
                           int64_t D, float sign) {
  const int64_t half = D / 2;
  const int64_t total = T * Hn * half;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t row = q / half;  // t * Hn + h
    const int64_t i = q - row * half;
    const int64_t t = row / Hn;
    float* v = x + row * D;
    const float c = cos[t * half + i];
    const float si = sign * sin[t * half + i];
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * si;
    v[i + half] = b * c + a * si;
  }
}

Status Rotate(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
              float sign, void* stream, const char* what) {
  XT_RETURN_IF_ERROR(detail::CheckSizes(what, {T, Hn, D}));
  const int64_t total = T * Hn * (D / 2);
  if (total == 0) return Status::OK();
  XT_LAUNCH(RopeKernel, detail::BlocksFor(total), detail::kThreads, 0, cudaStream_t(stream))
  (x, cos, sin, T, Hn, D, sign);
  return Check(cudaGetLastError(), what);
}

}  // namespace

Status RopeForward(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                   void* stream) {
  return Rotate(x, cos, sin, T, Hn, D, 1.0f, stream, "rope_forward");
}

Status RopeBackward(float* dx, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                    void* stream) {
  return Rotate(dx, cos, sin, T, Hn, D, -1.0f, stream, "rope_backward");
}

}  // namespace xt::cuda
