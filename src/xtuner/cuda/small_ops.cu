// Small ops of the training step on the GPU (loss_cuda.h): the MoE balance statistics
// (ops::moe_balance_stats, bit-identical), y += x, a row broadcast, double -> float with a scale.
#include <cuda_runtime.h>

#include <algorithm>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/loss_cuda.h"

namespace xt::cuda {
namespace {

using detail::kThreads;

// prob_sum[e] += probs[t, e] for t in order, in double: one thread per expert (threads of a warp
// read neighbouring experts of one token). Eight tokens' loads are issued before their adds so
// the walk is not one load latency per token; the adds stay in token order.
__global__ void BalanceProbSumKernel(double* prob_sum, const float* probs, int64_t T, int64_t E) {
  constexpr int kUnroll = 8;
  for (int64_t e = detail::GlobalThread(); e < E; e += detail::GridThreads()) {
    double acc = prob_sum[e];
    int64_t t = 0;
    for (; t + kUnroll <= T; t += kUnroll) {
      float p[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) p[u] = probs[(t + u) * E + e];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) acc += double(p[u]);
    }
    for (; t < T; ++t) acc += double(probs[t * E + e]);
    prob_sum[e] = acc;
  }
}

// count[e] += the number of j with topk_idx[j] == e, j < n: one block (kThreads) per expert,
// experts grid-strided; integer counts, so the order of the count does not matter.
__global__ void BalanceCountKernel(double* count, const int32_t* topk_idx, int64_t n, int64_t E) {
  __shared__ unsigned long long part[kThreads];
  const int tid = int(threadIdx.x);
  for (int64_t e = blockIdx.x; e < E; e += gridDim.x) {
    unsigned long long m = 0;
    for (int64_t j = tid; j < n; j += kThreads) m += int64_t(topk_idx[j]) == e ? 1 : 0;
    part[tid] = m;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s /= 2) {
      if (tid < s) part[tid] += part[tid + s];
      __syncthreads();
    }
    if (tid == 0) count[e] += double(part[0]);
    __syncthreads();  // part[0] read before the next expert writes part
  }
}

__global__ void AddInPlaceKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) y[i] += x[i];
}

__global__ void AddAtKernel(float* y, const int64_t* at, const float* delta, int64_t n) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) y[at[i]] += delta[i];
}

__global__ void BroadcastRowKernel(float* out, const float* row, int64_t T, int64_t E) {
  const int64_t n = T * E;
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) out[i] = row[i % E];
}

__global__ void DoubleToFloatScaledKernel(float* out, const double* in, int64_t n, double scale) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads())
    out[i] = float(in[i] * scale);
}

// Sum of squares: each of a fixed grid's threads adds its grid-stride elements in double, then
// the block's threads are summed by a fixed tree into partial[block].
constexpr int kSumBlocks = 1024;  // a power of two (the final tree)
__device__ void BlockTreeSum(double* shared, int tid) {
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    __syncthreads();
    if (tid < w) shared[tid] += shared[tid + w];
  }
  __syncthreads();
}

__global__ void SumSquaresPartialKernel(double* partial, const float* x, int64_t n) {
  __shared__ double sh[kThreads];
  double acc = 0;
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) {
    const double v = x[i];
    acc += v * v;
  }
  sh[threadIdx.x] = acc;
  BlockTreeSum(sh, threadIdx.x);
  if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

// One block of kSumBlocks threads: out = the sum of `blocks` partials (the rest count 0).
__global__ void SumPartialsKernel(double* out, const double* partial, int blocks) {
  __shared__ double sh[kSumBlocks];
  sh[threadIdx.x] = int(threadIdx.x) < blocks ? partial[threadIdx.x] : 0.0;
  BlockTreeSum(sh, threadIdx.x);
  if (threadIdx.x == 0) *out = sh[0];
}

}  // namespace

Status SumOfSquares(double* out, const float* x, int64_t n, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("sum_of_squares", {n}));
  const cudaStream_t s = cudaStream_t(stream);
  if (n == 0) return Check(cudaMemsetAsync(out, 0, sizeof(double), s), "sum_of_squares");
  const int blocks = int(std::min<int64_t>(kSumBlocks, (n + kThreads - 1) / kThreads));
  detail::Scratch scratch(s);
  double* partial = nullptr;
  XT_RETURN_IF_ERROR(scratch.Alloc(&partial, blocks, "sum_of_squares"));
  XT_LAUNCH(SumSquaresPartialKernel, blocks, kThreads, 0, s)(partial, x, n);
  Status st = Check(cudaGetLastError(), "sum_of_squares launch");
  if (st.ok()) {
    XT_LAUNCH(SumPartialsKernel, 1, kSumBlocks, 0, s)(out, partial, blocks);
    st = Check(cudaGetLastError(), "sum_of_squares launch");
  }
  const Status freed = scratch.Release("sum_of_squares");
  return st.ok() ? freed : st;
}

Status MoeBalanceStats(double* count, double* prob_sum, const float* probs, const int32_t* topk_idx,
                       int64_t T, int64_t E, int64_t k, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("moe_balance_stats", {T, E, k}));
  if (T == 0 || E == 0) return Status::OK();
  const cudaStream_t s = cudaStream_t(stream);
  constexpr int kExpertThreads = 64;
  XT_LAUNCH(BalanceProbSumKernel, detail::BlocksFor(E, kExpertThreads), kExpertThreads, 0, s)
  (prob_sum, probs, T, E);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "moe_balance_stats prob_sum launch"));
  if (k == 0) return Status::OK();
  XT_LAUNCH(BalanceCountKernel, detail::BlocksForItems(E), kThreads, 0, s)
  (count, topk_idx, T * k, E);
  return Check(cudaGetLastError(), "moe_balance_stats count launch");
}

Status AddInPlace(float* y, const float* x, int64_t n, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("add_in_place", {n}));
  if (n == 0) return Status::OK();
  XT_LAUNCH(AddInPlaceKernel, detail::BlocksFor(n), kThreads, 0, cudaStream_t(stream))(y, x, n);
  return Check(cudaGetLastError(), "add_in_place launch");
}

Status AddAt(float* y, const int64_t* at, const float* delta, int64_t n, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("add_at", {n}));
  if (n == 0) return Status::OK();
  XT_LAUNCH(AddAtKernel, detail::BlocksFor(n), kThreads, 0, cudaStream_t(stream))(y, at, delta, n);
  return Check(cudaGetLastError(), "add_at launch");
}

Status BroadcastRow(float* out, const float* row, int64_t T, int64_t E, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("broadcast_row", {T, E}));
  if (T == 0 || E == 0) return Status::OK();
  XT_LAUNCH(BroadcastRowKernel, detail::BlocksFor(T * E), kThreads, 0, cudaStream_t(stream))
  (out, row, T, E);
  return Check(cudaGetLastError(), "broadcast_row launch");
}

Status DoubleToFloatScaled(float* out, const double* in, int64_t n, double scale, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("double_to_float_scaled", {n}));
  if (n == 0) return Status::OK();
  XT_LAUNCH(DoubleToFloatScaledKernel, detail::BlocksFor(n), kThreads, 0, cudaStream_t(stream))
  (out, in, n, scale);
  return Check(cudaGetLastError(), "double_to_float_scaled launch");
}

}  // namespace xt::cuda
