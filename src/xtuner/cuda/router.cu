// MoE router on the GPU (ops::router_forward / router_backward): one thread per token running
// the row functions the CPU twin runs (ops/router_row.h), so top-k ties, NaN handling and the
// sums' order are the CPU's. Rows are read with a stride of E floats per thread: fine for a
// router's E (8..256).
#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/router_row.h"

namespace xt::cuda {
namespace {

__global__ void RouterForwardKernel(int32_t* topk_idx, float* topk_w, float* probs,
                                    const float* logits, int64_t T, int64_t E, int64_t k,
                                    bool norm_topk) {
  for (int64_t t = detail::GlobalThread(); t < T; t += detail::GridThreads())
    ops::router_forward_row(topk_idx + t * k, topk_w + t * k, probs + t * E, logits + t * E, E, k,
                            norm_topk);
}

__global__ void RouterBackwardKernel(float* dlogits, const float* dtopk_w, const float* dprobs,
                                     const float* probs, const int32_t* topk_idx, int64_t T,
                                     int64_t E, int64_t k, bool norm_topk) {
  for (int64_t t = detail::GlobalThread(); t < T; t += detail::GridThreads())
    ops::router_backward_row(dlogits + t * E, dtopk_w + t * k, dprobs ? dprobs + t * E : nullptr,
                             probs + t * E, topk_idx + t * k, E, k, norm_topk);
}

constexpr int kRouterThreads = 128;

}  // namespace

Status RouterForward(int32_t* topk_idx, float* topk_w, float* probs, const float* logits, int64_t T,
                     int64_t E, int64_t k, bool norm_topk, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("router_forward", {T, E, k}));
  if (k < 1 || k > E)
    return Status::Error("router_forward: need 1 <= k <= E, got k = " + std::to_string(k) +
                         ", E = " + std::to_string(E));
  if (T == 0) return Status::OK();
  XT_LAUNCH(RouterForwardKernel, detail::BlocksFor(T, kRouterThreads), kRouterThreads, 0,
            cudaStream_t(stream))
  (topk_idx, topk_w, probs, logits, T, E, k, norm_topk);
  return Check(cudaGetLastError(), "router_forward launch");
}

Status RouterBackward(float* dlogits, const float* dtopk_w, const float* dprobs, const float* probs,
                      const int32_t* topk_idx, int64_t T, int64_t E, int64_t k, bool norm_topk,
                      void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("router_backward", {T, E, k}));
  if (T == 0 || E == 0) return Status::OK();
  XT_LAUNCH(RouterBackwardKernel, detail::BlocksFor(T, kRouterThreads), kRouterThreads, 0,
            cudaStream_t(stream))
  (dlogits, dtopk_w, dprobs, probs, topk_idx, T, E, k, norm_topk);
  return Check(cudaGetLastError(), "router_backward launch");
}

}  // namespace xt::cuda
