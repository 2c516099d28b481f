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

// x (T, Hn, D) rotated: sign = +1 by +angle (forward), -1 by -angle (the transpose, for
// backward), the CPU twin's expressions with si = sign * s exact. Into out (fp32; out == x: in
// place, an odd D's last element left as is) or, where out16 is given, into out16 rounded to bf16
// (nearest even; an odd D's last element rounded as is).
__global__ void RopeKernel(float* out, __nv_bfloat16* out16, const float* x, const float* cos,
                           const float* sin, int64_t T, int64_t Hn, int64_t D, float sign) {
  const int64_t half = D / 2;
  const int64_t total = T * Hn * half;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t row = q / half;  // t * Hn + h
    const int64_t i = q - row * half;
    const int64_t t = row / Hn;
    const float* v = x + row * D;
    const float c = cos[t * half + i];
    const float si = sign * sin[t * half + i];
    const float a = v[i], b = v[i + half];
    const float ra = a * c - b * si, rb = b * c + a * si;
    if (out16) {  // uniform over the grid
      __nv_bfloat16* o = out16 + row * D;
      o[i] = __float2bfloat16_rn(ra);
      o[i + half] = __float2bfloat16_rn(rb);
      if (D % 2 == 1 && i == 0) o[D - 1] = __float2bfloat16_rn(v[D - 1]);
    } else {
      float* o = out + row * D;
      o[i] = ra;
      o[i + half] = rb;
    }
  }
}

// RopeKernel over x into out or out16 (one of them null), the calls' shared checks and launch.
Status Rotate(float* out, uint16_t* out16, const float* x, const float* cos, const float* sin,
              int64_t T, int64_t Hn, int64_t D, float sign, void* stream, const char* what) {
  XT_RETURN_IF_ERROR(detail::CheckSizes(what, {T, Hn, D}));
  const int64_t total = T * Hn * (D / 2);
  if (total == 0) {  // no pair (D = 1: every element as is)
    if (!out16 || T * Hn * D == 0) return Status::OK();
    return ToBf16(out16, x, T * Hn * D, stream);
  }
  XT_LAUNCH(RopeKernel, detail::BlocksFor(total), detail::kThreads, 0, cudaStream_t(stream))
  (out, reinterpret_cast<__nv_bfloat16*>(out16), x, cos, sin, T, Hn, D, sign);
  return Check(cudaGetLastError(), what);
}

}  // namespace

Status RopeForward(float* x, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                   void* stream) {
  return Rotate(x, nullptr, x, cos, sin, T, Hn, D, 1.0f, stream, "rope_forward");
}

Status RopeForward(uint16_t* out16, const float* x, const float* cos, const float* sin, int64_t T,
                   int64_t Hn, int64_t D, void* stream) {
  return Rotate(nullptr, out16, x, cos, sin, T, Hn, D, 1.0f, stream, "rope_forward (bf16)");
}

Status RopeBackward(float* dx, const float* cos, const float* sin, int64_t T, int64_t Hn, int64_t D,
                    void* stream) {
  return Rotate(dx, nullptr, dx, cos, sin, T, Hn, D, -1.0f, stream, "rope_backward");
}

}  // namespace xt::cuda
