// Bias rows on the GPU (ops::bias_forward / bias_backward and their per-expert forms), bit for
// bit as the CPU's: the forward one add per element, the backward one thread per column adding
// the rows in order (coalesced: neighbouring threads read neighbouring columns of a row).
// Speed idea, not done: split the rows into fixed chunks summed in a fixed tree (a different
// order from the CPU's, so no longer bit for bit) when N is large and O small.
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

__global__ void BiasBackwardKernel(float* db, const float* dout, int64_t N, int64_t O) {
  for (int64_t o = detail::GlobalThread(); o < O; o += detail::GridThreads()) {
    float acc = db[o];
    for (int64_t n = 0; n < N; ++n) acc += dout[n * O + o];
    db[o] = acc;
  }
}

Status CheckOffsets(const char* op, const int32_t* offsets, int64_t E) {
  if (!offsets) return Status::Error(std::string(op) + ": null offsets");
  if (offsets[0] != 0) return Status::Error(std::string(op) + ": offsets must start at 0");
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] < offsets[e])
      return Status::Error(std::string(op) + ": offsets decrease at expert " + std::to_string(e));
  return Status::OK();
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
  XT_LAUNCH(BiasBackwardKernel, detail::BlocksFor(O), detail::kThreads, 0, cudaStream_t(stream))
  (db, dout, N, O);
  return Check(cudaGetLastError(), "bias_backward launch");
}

Status GroupedBiasForward(float* out, const float* b, const int32_t* offsets, int64_t E, int64_t O,
                          void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("grouped_bias_forward", {E, O}));
  XT_RETURN_IF_ERROR(CheckOffsets("grouped_bias_forward", offsets, E));
  for (int64_t e = 0; e < E; ++e)
    XT_RETURN_IF_ERROR(BiasForward(out + int64_t(offsets[e]) * O, b + e * O,
                                   offsets[e + 1] - offsets[e], O, stream));
  return Status::OK();
}

Status GroupedBiasBackward(float* db, const float* dout, const int32_t* offsets, int64_t E,
                           int64_t O, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("grouped_bias_backward", {E, O}));
  XT_RETURN_IF_ERROR(CheckOffsets("grouped_bias_backward", offsets, E));
  for (int64_t e = 0; e < E; ++e)
    XT_RETURN_IF_ERROR(BiasBackward(db + e * O, dout + int64_t(offsets[e]) * O,
                                    offsets[e + 1] - offsets[e], O, stream));
  return Status::OK();
}

}  // namespace xt::cuda
