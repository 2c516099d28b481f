// AdamW's elementwise update on the GPU, bit-identical to AdamW::Step (optim/adamw.cc): the same
// float scalars (MakeAdamWStepScalars in optim/adamw_scalars.h, shared with the CPU step),
// and UpdateChunk's float operations in UpdateChunk's order, each rounded on its own: the
// round-to-nearest intrinsics below are never fused into multiply-adds (adamw.cc is compiled
// with -ffp-contract=off for the same reason), and __fdiv_rn / __fsqrt_rn are IEEE-exact.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

// p16 (null: none): the new parameters rounded to bf16 (nearest even, as ToBf16).
__global__ void AdamWKernel(float* p, const float* g, float* m, float* v, int64_t n,
                            AdamWStepScalars s, __nv_bfloat16* p16) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) {
    const float gi = __fmul_rn(g[i], s.grad_scale);  // exact when grad_scale is 1
    const float pi = __fmul_rn(p[i], s.decay);       // exact when decay is 1
    const float m0 = m[i];
    // torch's lerp: weight < 0.5 ? m + w (g - m) : g - (g - m)(1 - w).
    const float mi = s.low_weight ? __fadd_rn(m0, __fmul_rn(s.w1, __fsub_rn(gi, m0)))
                                  : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, m0), s.one_minus_w1));
    // v * b2 + (w2 * g) * g
    const float vi = __fadd_rn(__fmul_rn(v[i], s.b2), __fmul_rn(__fmul_rn(s.w2, gi), gi));
    // sqrt(v) / bc2_sqrt + eps
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    m[i] = mi;
    v[i] = vi;
    // p + (neg_step_size * m) / denom
    const float pn = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
    p[i] = pn;
    if (p16) p16[i] = __float2bfloat16_rn(pn);
  }
}

}  // namespace

Status AdamWStep(float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWStepScalars& s, void* stream, void* params_bf16) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("adamw_step", {n}));
  if (n == 0) return Status::OK();
  XT_LAUNCH(AdamWKernel, detail::BlocksFor(n), detail::kThreads, 0, cudaStream_t(stream))
  (params, grads, m, v, n, s, static_cast<__nv_bfloat16*>(params_bf16));
  return Check(cudaGetLastError(), "adamw_step launch");
}

Status AdamWStepRange(float* params, const float* grads, float* m, float* v, int64_t begin,
                      int64_t end, const AdamWStepScalars& s, const Bf16Mirror& mirror,
                      void* stream) {
  if (begin < 0 || end < begin)
    return Status::Error("adamw_step: bad range [" + std::to_string(begin) + ", " +
                         std::to_string(end) + ")");
  // The range in up to three pieces: before the mirror, inside it, after it.
  const int64_t lo = mirror.data ? std::clamp(mirror.begin, begin, end) : end;
  const int64_t hi = mirror.data ? std::clamp(mirror.end, lo, end) : end;
  const int64_t cuts[4] = {begin, lo, hi, end};
  for (int piece = 0; piece < 3; ++piece) {
    const int64_t a = cuts[piece], b = cuts[piece + 1];
    if (a == b) continue;
    uint16_t* p16 = piece == 1 ? mirror.data + (a - mirror.begin) : nullptr;
    XT_RETURN_IF_ERROR(AdamWStep(params + a, grads + (a - begin), m + (a - begin), v + (a - begin),
                                 b - a, s, stream, p16));
  }
  return Status::OK();
}

}  // namespace xt::cuda
