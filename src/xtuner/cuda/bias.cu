// Bias rows on the GPU (ops::bias_forward / bias_backward and their per-expert forms): the
// forward one add per element, bit for bit the CPU's. The backward adds each column's rows in
// order (coalesced: neighbouring threads read neighbouring columns of a row): up to kChunkRows
// rows by one thread per column, bit for bit the CPU's; more in chunks of kChunkRows rows, one
// thread per (chunk, column), whose sums are then added in chunk order (deterministic, but
// another order than the CPU's: a column of 128k rows is not one thread's walk).
// Speed idea, not done: the per-expert forms launch once per expert with rows (host offsets).
#include <cuda_runtime.h>

#include <string>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

__global__ void BiasForwardKernel(float* out, const float* b, int64_t N, int64_t O) {
  const int64_t total = N * O;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads())
    out[q] += b[q % O];
}

constexpr int64_t kChunkRows = 1024;

__global__ void BiasBackwardKernel(float* db, const float* dout, int64_t N, int64_t O) {
  for (int64_t o = detail::GlobalThread(); o < O; o += detail::GridThreads()) {
    float acc = db[o];
    for (int64_t n = 0; n < N; ++n) acc += dout[n * O + o];
    db[o] = acc;
  }
}

// partial (chunks, O): each chunk's rows of each column summed in order, from zero.
__global__ void BiasChunkSumKernel(float* partial, const float* dout, int64_t N, int64_t O,
                                   int64_t chunks) {
  for (int64_t q = detail::GlobalThread(); q < chunks * O; q += detail::GridThreads()) {
    const int64_t c = q / O, o = q - c * O;
    const int64_t end = min(N, (c + 1) * kChunkRows);
    float acc = 0.0f;
    for (int64_t n = c * kChunkRows; n < end; ++n) acc += dout[n * O + o];
    partial[q] = acc;
  }
}

}  // namespace

Status BiasForward(float* out, const float* b, int64_t N, int64_t O, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("bias_forward", {N, O}));
  if (N == 0 || O == 0) return Status::OK();
  XT_LAUNCH(BiasForwardKernel, detail::BlocksFor(N * O), detail::kThreads, 0, cudaStream_t(stream))
  (out, b, N, O);
  return Check(cudaGetLastError(), "bias_forward launch");
}

Status BiasBackward(float* db, const float* dout, int64_t N, int64_t O, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("bias_backward", {N, O}));
  if (N == 0 || O == 0) return Status::OK();
  const cudaStream_t st = cudaStream_t(stream);
  if (N <= kChunkRows) {
    XT_LAUNCH(BiasBackwardKernel, detail::BlocksFor(O), detail::kThreads, 0, st)(db, dout, N, O);
    return Check(cudaGetLastError(), "bias_backward launch");
  }
  const int64_t chunks = (N + kChunkRows - 1) / kChunkRows;
  detail::Scratch scratch(st);
  float* partial = nullptr;  // (chunks, O)
  Status s = scratch.Alloc(&partial, chunks * O, "bias_backward scratch");
  if (s.ok()) {
    XT_LAUNCH(BiasChunkSumKernel, detail::BlocksFor(chunks * O), detail::kThreads, 0, st)
    (partial, dout, N, O, chunks);
    s = Check(cudaGetLastError(), "bias_backward (chunks) launch");
  }
  if (s.ok()) {  // db += the chunks' sums, in chunk order
    XT_LAUNCH(BiasBackwardKernel, detail::BlocksFor(O), detail::kThreads, 0, st)
    (db, partial, chunks, O);
    s = Check(cudaGetLastError(), "bias_backward launch");
  }
  const Status freed = scratch.Release("bias_backward scratch free");
  return s.ok() ? freed : s;
}

Status GroupedBiasForward(float* out, const float* b, const int32_t* offsets, int64_t E, int64_t O,
                          void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("grouped_bias_forward", {E, O}));
  XT_RETURN_IF_ERROR(detail::CheckExpertOffsets("grouped_bias_forward", offsets, E));
  for (int64_t e = 0; e < E; ++e)
    XT_RETURN_IF_ERROR(BiasForward(out + int64_t(offsets[e]) * O, b + e * O,
                                   offsets[e + 1] - offsets[e], O, stream));
  return Status::OK();
}

Status GroupedBiasBackward(float* db, const float* dout, const int32_t* offsets, int64_t E,
                           int64_t O, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("grouped_bias_backward", {E, O}));
  XT_RETURN_IF_ERROR(detail::CheckExpertOffsets("grouped_bias_backward", offsets, E));
  for (int64_t e = 0; e < E; ++e)
    XT_RETURN_IF_ERROR(BiasBackward(db + e * O, dout + int64_t(offsets[e]) * O,
                                    offsets[e + 1] - offsets[e], O, stream));
  return Status::OK();
}

}  // namespace xt::cuda
