// LoRA's dropout masks on the GPU (ops::dropout_mask, bit for bit): one thread per element,
// grid-strided, the mask drawn by ops/dropout_mask.h as on the CPU.
#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/dropout_mask.h"

namespace xt::cuda {
namespace {

// Element (t, c): in's, or zero where the mask drops it; assigned, or added (fp32 only).
template <class T>
__global__ void DropoutMaskKernel(T* out, const T* in, int64_t N, int64_t C, const uint64_t* keys,
                                  uint64_t salt, uint32_t threshold, bool add) {
  const int64_t total = N * C;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t t = q / C, c = q - t * C;
    const bool keep = ops::dropout_keep(ops::dropout_row_key(keys[t], salt), c, threshold);
    const T kept = keep ? in[q] : T(0);
    if constexpr (sizeof(T) == 4) {
      out[q] = add ? __fadd_rn(out[q], kept) : kept;
    } else {
      out[q] = kept;  // bf16 bits: +0 where dropped
    }
  }
}

template <class T>
Status LaunchDropoutMask(T* out, const T* in, int64_t N, int64_t C, const uint64_t* keys,
                         uint64_t salt, uint32_t threshold, bool add, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("dropout_mask", {N, C}));
  if (N == 0 || C == 0) return Status::OK();
  XT_LAUNCH(DropoutMaskKernel<T>, detail::BlocksFor(N * C), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, in, N, C, keys, salt, threshold, add);
  return Check(cudaGetLastError(), "dropout_mask launch");
}

}  // namespace

Status DropoutMask(float* out, const float* in, int64_t T, int64_t C, const uint64_t* keys,
                   uint64_t salt, uint32_t threshold, bool add, void* stream) {
  return LaunchDropoutMask(out, in, T, C, keys, salt, threshold, add, stream);
}

Status DropoutMask(uint16_t* out, const uint16_t* in, int64_t T, int64_t C, const uint64_t* keys,
                   uint64_t salt, uint32_t threshold, void* stream) {
  return LaunchDropoutMask(out, in, T, C, keys, salt, threshold, false, stream);
}

}  // namespace xt::cuda
