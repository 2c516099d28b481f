// MoE routers on the GPU (ops::router_forward / router_backward, and DeepSeek-V3's
// router_sigmoid_forward / backward): one thread per token running
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

__global__ void RouterSigmoidForwardKernel(int32_t* topk_idx, float* topk_w, float* scores,
                                           const float* logits, const float* bias, int64_t T,
                                           int64_t E, int64_t k, int64_t n_group,
                                           int64_t topk_group, bool norm_topk, float scale) {
  for (int64_t t = detail::GlobalThread(); t < T; t += detail::GridThreads())
    ops::router_sigmoid_forward_row(topk_idx + t * k, topk_w + t * k, scores + t * E,
                                    logits + t * E, bias, E, k, n_group, topk_group, norm_topk,
                                    scale);
}

__global__ void RouterSigmoidBackwardKernel(float* dlogits, const float* dtopk_w,
                                            const float* scores, const int32_t* topk_idx, int64_t T,
                                            int64_t E, int64_t k, bool norm_topk, float scale) {
  for (int64_t t = detail::GlobalThread(); t < T; t += detail::GridThreads())
    ops::router_sigmoid_backward_row(dlogits + t * E, dtopk_w + t * k, scores + t * E,
                                     topk_idx + t * k, E, k, norm_topk, scale);
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

Status RouterSigmoidForward(int32_t* topk_idx, float* topk_w, float* scores, const float* logits,
                            const float* bias, int64_t T, int64_t E, int64_t k, int64_t n_group,
                            int64_t topk_group, bool norm_topk, float scale, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("router_sigmoid_forward", {T, E, k, n_group, topk_group}));
  if (!ops::router_sigmoid_sizes_ok(E, k, n_group, topk_group))
    return Status::Error("router_sigmoid_forward: need n_group in [1, 64] groups of >= 2 of the " +
                         std::to_string(E) + " experts, topk_group (" + std::to_string(topk_group) +
                         ") <= n_group (" + std::to_string(n_group) + ") and 1 <= k (" +
                         std::to_string(k) + ") <= the experts of topk_group groups");
  if (T == 0) return Status::OK();
  XT_LAUNCH(RouterSigmoidForwardKernel, detail::BlocksFor(T, kRouterThreads), kRouterThreads, 0,
            cudaStream_t(stream))
  (topk_idx, topk_w, scores, logits, bias, T, E, k, n_group, topk_group, norm_topk, scale);
  return Check(cudaGetLastError(), "router_sigmoid_forward launch");
}

Status RouterSigmoidBackward(float* dlogits, const float* dtopk_w, const float* scores,
                             const int32_t* topk_idx, int64_t T, int64_t E, int64_t k,
                             bool norm_topk, float scale, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("router_sigmoid_backward", {T, E, k}));
  if (T == 0 || E == 0) return Status::OK();
  XT_LAUNCH(RouterSigmoidBackwardKernel, detail::BlocksFor(T, kRouterThreads), kRouterThreads, 0,
            cudaStream_t(stream))
  (dlogits, dtopk_w, scores, topk_idx, T, E, k, norm_topk, scale);
  return Check(cudaGetLastError(), "router_sigmoid_backward launch");
}

}  // namespace xt::cuda
