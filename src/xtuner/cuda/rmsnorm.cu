#include <cuda_runtime.h>

#include <cmath>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

constexpr int kRowsPerBlock = detail::kThreads / 32;  // one warp per row

// One warp per row, rows grid-strided: a warp-wide sum of squares in double (a butterfly, so
// every lane ends with the same bits), then the scaled row. No shared memory and no block barrier:
// the q/k norms run over T * heads rows of head_dim (128) elements, where a block per row would
// leave most of its threads idle.
template <class Out>
__global__ void RmsnormForwardKernel(Out* out, float* rstd, const float* in, const float* w,
                                     int64_t N, int64_t C, float eps) {
  const int lane = threadIdx.x % 32;
  for (int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32; n < N;
       n += int64_t(gridDim.x) * kRowsPerBlock) {  // uniform in the warp
    const float* x = in + n * C;                   // (C)
    Out* y = out + n * C;                          // (C)
    double ss = 0;  // in double, as the CPU twin: C can be large, fp32 drifts
    for (int64_t c = lane; c < C; c += 32) ss += double(x[c]) * double(x[c]);
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    const float r = float(1.0 / sqrt(ss / double(C) + double(eps)));
    if (lane == 0) rstd[n] = r;
    for (int64_t c = lane; c < C; c += 32) detail::StoreAs(y + c, x[c] * r * w[c]);
  }
}

template <class Out>
Status Forward(Out* out, float* rstd, const float* in, const float* w, int64_t N, int64_t C,
               float eps, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("rmsnorm_forward", {N, C}));
  if (N == 0) return Status::OK();
  XT_LAUNCH(RmsnormForwardKernel<Out>, detail::BlocksFor(N, kRowsPerBlock), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, rstd, in, w, N, C, eps);
  return Check(cudaGetLastError(), "rmsnorm_forward launch");
}

}  // namespace

Status RmsnormForward(float* out, float* rstd, const float* in, const float* w, int64_t N,
                      int64_t C, float eps, void* stream) {
  return Forward(out, rstd, in, w, N, C, eps, stream);
}
Status RmsnormForward(uint16_t* out, float* rstd, const float* in, const float* w, int64_t N,
                      int64_t C, float eps, void* stream) {
  return Forward(out, rstd, in, w, N, C, eps, stream);
}

}  // namespace xt::cuda
