// RoPE in the HF rotate_half layout (ops::rope_forward / rope_backward on the GPU), in place or
// the forward into bf16: one thread per pair (i, i + D/2) of one head of one token, grid-strided,
// int64 indices.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

// The pair (a, b) rotated by (c, si): both kernels' one expression, so the bf16 forward rounds
// exactly what the fp32 one writes.
__device__ __forceinline__ void RotatePair(float a, float b, float c, float si, float* ra,
                                           float* rb) {
  *ra = a * c - b * si;
  *rb = b * c + a * si;
}

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
    RotatePair(v[i], v[i + half], c, si, &v[i], &v[i + half]);
  }
}

// The forward's rotation of x into out16, rounded to bf16 (nearest even); an odd D's last
// element rounded as is.
__global__ void RopeBf16Kernel(__nv_bfloat16* out16, const float* x, const float* cos,
                               const float* sin, int64_t T, int64_t Hn, int64_t D) {
  const int64_t half = D / 2;
  const int64_t total = T * Hn * half;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t row = q / half;  // t * Hn + h
    const int64_t i = q - row * half;
    const int64_t t = row / Hn;
    const float* v = x + row * D;
    __nv_bfloat16* o = out16 + row * D;
    const float c = cos[t * half + i];
    const float si = sin[t * half + i];
    float ra, rb;
    RotatePair(v[i], v[i + half], c, si, &ra, &rb);
    o[i] = __float2bfloat16_rn(ra);
    o[i + half] = __float2bfloat16_rn(rb);
    if (D % 2 == 1 && i == 0) o[D - 1] = __float2bfloat16_rn(v[D - 1]);
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

Status RopeForward(uint16_t* out16, const float* x, const float* cos, const float* sin, int64_t T,
                   int64_t Hn, int64_t D, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("rope_forward (bf16)", {T, Hn, D}));
  const int64_t total = T * Hn * (D / 2);
  if (total == 0) {  // D = 1: no pair, every element as is
    if (T * Hn * D == 0) return Status::OK();
    return ToBf16(out16, x, T * Hn * D, stream);
  }
  XT_LAUNCH(RopeBf16Kernel, detail::BlocksFor(total), detail::kThreads, 0, cudaStream_t(stream))
  (reinterpret_cast<__nv_bfloat16*>(out16), x, cos, sin, T, Hn, D);
  return Check(cudaGetLastError(), "rope_forward (bf16)");
}

Status RopeBackward(float* dx, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                    void* stream) {
  return Rotate(dx, cos, sin, T, Hn, D, -1.0f, stream, "rope_backward");
}

}  // namespace xt::cuda
