// Bias rows on the GPU (ops::bias_forward / bias_backward and their per-expert forms): the
// forward one add per element, bit for bit the CPU's. The backward adds each column's rows in
// order (coalesced: neighbouring threads read neighbouring columns of a row): up to kChunkRows
// rows by one thread per column, bit for bit the CPU's; more in chunks of kChunkRows rows, one
// thread per (chunk, column), whose sums are then added in chunk order (deterministic, but
// another order than the CPU's: a column of 128k rows is not one thread's walk). The per-expert
// forms take every expert in one launch (two for the backward: the rows, then the chunks' sums),
// with the same sums in the same order as one BiasBackward per expert.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

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

// Row q / O's expert: the e with offsets[e] <= row < offsets[e + 1] (offsets (E + 1) ascending;
// empty experts skipped), by bisection.
__device__ int64_t ExpertOfRow(const int32_t* offsets, int64_t E, int64_t row) {
  int64_t lo = 0, hi = E;  // offsets[lo] <= row < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= row)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

__global__ void GroupedBiasForwardKernel(float* out, const float* b, const int32_t* offsets,
                                         int64_t E, int64_t O) {
  const int64_t total = int64_t(offsets[E]) * O;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t row = q / O, o = q - row * O;
    out[q] += b[ExpertOfRow(offsets, E, row) * O + o];
  }
}

// One task of the grouped backward: rows [row0, row1) of expert e's, summed per column in order
// into db[e] (from its value: slot < 0) or into partial[slot] (from zero: a chunk).
struct BiasTask {
  int64_t row0, row1, e, slot;
};

__global__ void GroupedBiasRowsKernel(float* db, float* partial, const float* dout,
                                      const BiasTask* tasks, int64_t n_tasks, int64_t O) {
  for (int64_t q = detail::GlobalThread(); q < n_tasks * O; q += detail::GridThreads()) {
    const BiasTask t = tasks[q / O];
    const int64_t o = q % O;
    float acc = t.slot < 0 ? db[t.e * O + o] : 0.0f;
    for (int64_t n = t.row0; n < t.row1; ++n) acc += dout[n * O + o];
    (t.slot < 0 ? db[t.e * O + o] : partial[t.slot * O + o]) = acc;
  }
}

// db[e] += expert e's chunks' sums partial[first .. first + count), in order (tasks reused:
// row0 = first, row1 = first + count).
__global__ void GroupedBiasChunksKernel(float* db, const float* partial, const BiasTask* sums,
                                        int64_t n_sums, int64_t O) {
  for (int64_t q = detail::GlobalThread(); q < n_sums * O; q += detail::GridThreads()) {
    const BiasTask t = sums[q / O];
    const int64_t o = q % O;
    float acc = db[t.e * O + o];
    for (int64_t c = t.row0; c < t.row1; ++c) acc += partial[c * O + o];
    db[t.e * O + o] = acc;
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
  if (int64_t(offsets[E]) * O == 0) return Status::OK();
  const cudaStream_t st = cudaStream_t(stream);
  detail::Scratch scratch(st);
  int32_t* offsets_d = nullptr;
  Status s = scratch.Alloc(&offsets_d, E + 1, "grouped_bias_forward offsets");
  if (s.ok())  // from pageable memory: staged before the call returns
    s = Check(cudaMemcpyAsync(offsets_d, offsets, size_t(E + 1) * sizeof(int32_t),
                              cudaMemcpyHostToDevice, st),
              "grouped_bias_forward offsets");
  if (s.ok()) {
    XT_LAUNCH(GroupedBiasForwardKernel, detail::BlocksFor(int64_t(offsets[E]) * O),
              detail::kThreads, 0, st)
    (out, b, offsets_d, E, O);
    s = Check(cudaGetLastError(), "grouped_bias_forward launch");
  }
  const Status freed = scratch.Release("grouped_bias_forward scratch free");
  return s.ok() ? freed : s;
}

Status GroupedBiasBackward(float* db, const float* dout, const int32_t* offsets, int64_t E,
                           int64_t O, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("grouped_bias_backward", {E, O}));
  XT_RETURN_IF_ERROR(detail::CheckExpertOffsets("grouped_bias_backward", offsets, E));
  if (O == 0) return Status::OK();
  // As BiasBackward per expert: up to kChunkRows rows straight into db[e]; more in chunks of
  // kChunkRows rows, whose sums are then added to db[e] in chunk order.
  std::vector<BiasTask> tasks, sums;
  int64_t slots = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], r1 = offsets[e + 1];
    if (r1 - r0 <= kChunkRows) {
      if (r1 > r0) tasks.push_back({r0, r1, e, -1});
      continue;
    }
    sums.push_back({slots, slots, e, -1});
    for (int64_t r = r0; r < r1; r += kChunkRows, ++slots)
      tasks.push_back({r, std::min(r1, r + kChunkRows), e, slots});
    sums.back().row1 = slots;
  }
  if (tasks.empty()) return Status::OK();
  const cudaStream_t st = cudaStream_t(stream);
  detail::Scratch scratch(st);
  BiasTask *tasks_d = nullptr, *sums_d = nullptr;
  float* partial = nullptr;  // (slots, O)
  const int64_t n_tasks = int64_t(tasks.size()), n_sums = int64_t(sums.size());
  auto upload = [&](BiasTask** to, const std::vector<BiasTask>& from) {
    Status a = scratch.Alloc(to, int64_t(from.size()), "grouped_bias_backward tasks");
    if (!a.ok()) return a;  // from pageable memory: staged before the call returns
    return Check(cudaMemcpyAsync(*to, from.data(), from.size() * sizeof(BiasTask),
                                 cudaMemcpyHostToDevice, st),
                 "grouped_bias_backward tasks");
  };
  Status s = upload(&tasks_d, tasks);
  if (s.ok() && n_sums > 0) s = upload(&sums_d, sums);
  if (s.ok() && slots > 0) s = scratch.Alloc(&partial, slots * O, "grouped_bias_backward scratch");
  if (s.ok()) {
    XT_LAUNCH(GroupedBiasRowsKernel, detail::BlocksFor(n_tasks * O), detail::kThreads, 0, st)
    (db, partial, dout, tasks_d, n_tasks, O);
    s = Check(cudaGetLastError(), "grouped_bias_backward launch");
  }
  if (s.ok() && n_sums > 0) {
    XT_LAUNCH(GroupedBiasChunksKernel, detail::BlocksFor(n_sums * O), detail::kThreads, 0, st)
    (db, partial, sums_d, n_sums, O);
    s = Check(cudaGetLastError(), "grouped_bias_backward (chunks) launch");
  }
  const Status freed = scratch.Release("grouped_bias_backward scratch free");
  return s.ok() ? freed : s;
}

}  // namespace xt::cuda
