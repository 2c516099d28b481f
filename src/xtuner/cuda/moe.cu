// Dropless MoE dispatch on the GPU: the permutation of token rows into expert order and back,
// and the weighted un-permute (ops::moe_permute, moe_permute_backward, moe_combine_forward,
// moe_combine_backward). The plan (ops::moe_plan: offsets, sorted, slot_of) stays on the host
// for now; the caller copies it to the device. Every output element is written by one thread,
// in the CPU twin's order: no atomics.
#include <cuda_runtime.h>

#include <type_traits>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

using detail::kThreads;

// xs (A, H): xs[p] = x[sorted[p] / k].
template <class Out, class In>
__global__ void MoePermuteKernel(Out* xs, const In* x, const int32_t* sorted, int64_t A, int64_t k,
                                 int64_t H) {
  const int64_t total = A * H;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t p = q / H, h = q - p * H;
    const In* from = x + (int64_t(sorted[p]) / k) * H + h;
    if constexpr (std::is_same_v<Out, In>) {
      xs[q] = *from;  // a copy, bit for bit
    } else {
      detail::StoreAs(xs + q, detail::LoadAs(from));
    }
  }
}

// dx (T, H) += dxs[slot_of[t*k + j]] for j = 0..k-1, added one at a time (the CPU's order).
__global__ void MoePermuteBackwardKernel(float* dx, const float* dxs, const int32_t* slot_of,
                                         int64_t T, int64_t k, int64_t H) {
  const int64_t total = T * H;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t t = q / H, h = q - t * H;
    float acc = dx[q];
    for (int64_t j = 0; j < k; ++j) acc += dxs[int64_t(slot_of[t * k + j]) * H + h];
    dx[q] = acc;
  }
}

// y (T, H) = sum_j topk_w[t, j] * ys[slot_of[t*k + j]], from 0, j in order; ys16 (optional):
// ys rounded to bf16 (slot_of is a permutation: each element written once).
__global__ void MoeCombineForwardKernel(float* y, uint16_t* ys16, const float* ys,
                                        const float* topk_w, const int32_t* slot_of, int64_t T,
                                        int64_t k, int64_t H) {
  const int64_t total = T * H;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t t = q / H, h = q - t * H;
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = int64_t(slot_of[t * k + j]) * H + h;
      acc += topk_w[t * k + j] * ys[e];
      if (ys16) detail::StoreAs(ys16 + e, ys[e]);
    }
    y[q] = acc;
  }
}

constexpr int kWarpsPerBlock = kThreads / 32;

// One warp per assignment a = t*k + j, grid-strided: dys[slot] = w * dy[t] (slot_of is a
// permutation: each row written once), and dtopk_w[a] = <dy[t], ys[slot]> summed in double
// across the warp (a butterfly: every lane ends with the same bits).
template <class Out, class In>
__global__ void MoeCombineBackwardKernel(Out* dys, float* dtopk_w, const float* dy, const In* ys,
                                         const float* topk_w, const int32_t* slot_of, int64_t A,
                                         int64_t k, int64_t H) {
  const int lane = threadIdx.x % 32;
  for (int64_t a = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; a < A;
       a += int64_t(gridDim.x) * kWarpsPerBlock) {  // uniform in the warp
    const int64_t t = a / k;
    const int64_t p = slot_of[a];
    const float wj = topk_w[a];
    const float* g = dy + t * H;  // (H)
    const In* s = ys + p * H;     // (H)
    Out* ds = dys + p * H;        // (H)
    double dot = 0;
    for (int64_t h = lane; h < H; h += 32) {
      detail::StoreAs(ds + h, wj * g[h]);
      dot += double(g[h]) * double(detail::LoadAs(s + h));
    }
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) dtopk_w[a] = float(dot);
  }
}

template <class Out, class In>
Status Permute(Out* xs, const In* x, const int32_t* sorted, int64_t A, int64_t k, int64_t H,
               void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("moe_permute", {A, k, H}));
  if (A == 0 || H == 0) return Status::OK();
  if (k == 0) return Status::Error("moe_permute: k = 0 with A > 0");
  XT_LAUNCH((MoePermuteKernel<Out, In>), detail::BlocksFor(A * H), kThreads, 0,
            cudaStream_t(stream))
  (xs, x, sorted, A, k, H);
  return Check(cudaGetLastError(), "moe_permute launch");
}

template <class Out, class In>
Status CombineBackward(Out* dys, float* dtopk_w, const float* dy, const In* ys, const float* topk_w,
                       const int32_t* slot_of, int64_t T, int64_t k, int64_t H, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("moe_combine_backward", {T, k, H}));
  const int64_t A = T * k;
  if (A == 0) return Status::OK();
  // With H == 0 the blocks still run: dtopk_w is assigned 0, as on the CPU.
  XT_LAUNCH((MoeCombineBackwardKernel<Out, In>), detail::BlocksFor(A, kWarpsPerBlock), kThreads, 0,
            cudaStream_t(stream))
  (dys, dtopk_w, dy, ys, topk_w, slot_of, A, k, H);
  return Check(cudaGetLastError(), "moe_combine_backward launch");
}

}  // namespace

Status MoePermute(float* xs, const float* x, const int32_t* sorted, int64_t A, int64_t k, int64_t H,
                  void* stream) {
  return Permute(xs, x, sorted, A, k, H, stream);
}
Status MoePermute(uint16_t* xs, const float* x, const int32_t* sorted, int64_t A, int64_t k,
                  int64_t H, void* stream) {
  return Permute(xs, x, sorted, A, k, H, stream);
}
Status MoePermute(uint16_t* xs, const uint16_t* x, const int32_t* sorted, int64_t A, int64_t k,
                  int64_t H, void* stream) {
  return Permute(xs, x, sorted, A, k, H, stream);
}

Status MoePermuteBackward(float* dx, const float* dxs, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("moe_permute_backward", {T, k, H}));
  if (T == 0 || H == 0) return Status::OK();
  XT_LAUNCH(MoePermuteBackwardKernel, detail::BlocksFor(T * H), kThreads, 0, cudaStream_t(stream))
  (dx, dxs, slot_of, T, k, H);
  return Check(cudaGetLastError(), "moe_permute_backward launch");
}

Status MoeCombineForward(float* y, const float* ys, const float* topk_w, const int32_t* slot_of,
                         int64_t T, int64_t k, int64_t H, void* stream) {
  return MoeCombineForward(y, nullptr, ys, topk_w, slot_of, T, k, H, stream);
}
Status MoeCombineForward(float* y, uint16_t* ys16, const float* ys, const float* topk_w,
                         const int32_t* slot_of, int64_t T, int64_t k, int64_t H, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("moe_combine_forward", {T, k, H}));
  if (T == 0 || H == 0) return Status::OK();
  XT_LAUNCH(MoeCombineForwardKernel, detail::BlocksFor(T * H), kThreads, 0, cudaStream_t(stream))
  (y, ys16, ys, topk_w, slot_of, T, k, H);
  return Check(cudaGetLastError(), "moe_combine_forward launch");
}

Status MoeCombineBackward(float* dys, float* dtopk_w, const float* dy, const float* ys,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream) {
  return CombineBackward(dys, dtopk_w, dy, ys, topk_w, slot_of, T, k, H, stream);
}
Status MoeCombineBackward(uint16_t* dys, float* dtopk_w, const float* dy, const float* ys,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream) {
  return CombineBackward(dys, dtopk_w, dy, ys, topk_w, slot_of, T, k, H, stream);
}
Status MoeCombineBackward(uint16_t* dys, float* dtopk_w, const float* dy, const uint16_t* ys16,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H, void* stream) {
  return CombineBackward(dys, dtopk_w, dy, ys16, topk_w, slot_of, T, k, H, stream);
}

}  // namespace xt::cuda
