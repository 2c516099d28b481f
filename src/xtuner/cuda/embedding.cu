// Token embedding (ops::embedding_forward / embedding_backward on the GPU).
//
// Backward, deterministic and bit-identical to the CPU twin: the (id, token) pairs are sorted
// by id with CUB's stable radix sort (tokens of one id stay in token order), then one block per
// run of equal ids walks that run in order and adds each token's row to the table's row, as
// the CPU's counting sort does. No atomics. A very frequent id makes one long run (its block
// walks all its tokens: O(count) steps, parallel over H only).
#include <cuda_runtime.h>

#include <climits>
#include <cub/device/device_radix_sort.cuh>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

__global__ void EmbeddingForwardKernel(float* out, const int32_t* ids, const float* table,
                                       int64_t T, int64_t H) {
  const int64_t total = T * H;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t t = q / H, h = q - t * H;
    out[q] = table[int64_t(ids[t]) * H + h];
  }
}

__global__ void IotaKernel(int32_t* v, int64_t n) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) v[i] = int32_t(i);
}

// keys (T): the ids sorted; tokens (T): their tokens, in token order within an id. The block of
// a position that starts a run of equal ids adds the run's rows to dtable's row, in order.
__global__ void EmbeddingScatterKernel(float* dtable, const float* dout, const int32_t* keys,
                                       const int32_t* tokens, int64_t T, int64_t H) {
  for (int64_t p = blockIdx.x; p < T; p += gridDim.x) {
    const int32_t v = keys[p];
    if (p > 0 && keys[p - 1] == v) continue;  // not a run's start (uniform in the block)
    float* row = dtable + int64_t(v) * H;     // (H)
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      float acc = row[h];
      for (int64_t q = p; q < T && keys[q] == v; ++q) acc += dout[int64_t(tokens[q]) * H + h];
      row[h] = acc;
    }
  }
}

}  // namespace

Status EmbeddingForward(float* out, const int32_t* ids, const float* table, int64_t T, int64_t H,
                        void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("embedding_forward", {T, H}));
  if (T == 0 || H == 0) return Status::OK();
  XT_LAUNCH(EmbeddingForwardKernel, detail::BlocksFor(T * H), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, ids, table, T, H);
  return Check(cudaGetLastError(), "embedding_forward launch");
}

Status EmbeddingBackward(float* dtable, const float* dout, const int32_t* ids, int64_t T, int64_t V,
                         int64_t H, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("embedding_backward", {T, V, H}));
  if (T == 0 || H == 0) return Status::OK();
  if (T > INT32_MAX)
    return Status::Error("embedding_backward: T = " + std::to_string(T) + " does not fit int32");
  if (V == 0) return Status::Error("embedding_backward: tokens given but V = 0");
  const cudaStream_t st = cudaStream_t(stream);
  const int n = int(T);
  // Ids lie in [0, V): sort on their low end_bit bits only.
  int end_bit = 1;
  while (end_bit < 31 && (int64_t(1) << end_bit) < V) ++end_bit;

  size_t temp_bytes = 0;
  XT_RETURN_IF_ERROR(Check(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, ids, static_cast<int32_t*>(nullptr),
                                      static_cast<const int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), n, 0, end_bit, st),
      "embedding_backward sort (size query)"));
  // Sorted keys, tokens in, tokens out (T int32 each), CUB's temporary.
  detail::Scratch scratch(st);
  int32_t *keys = nullptr, *tokens_in = nullptr, *tokens = nullptr;
  char* temp = nullptr;
  for (int32_t** p : {&keys, &tokens_in, &tokens})
    XT_RETURN_IF_ERROR(scratch.Alloc(p, n, "embedding_backward scratch"));
  XT_RETURN_IF_ERROR(scratch.Alloc(&temp, int64_t(temp_bytes), "embedding_backward scratch"));

  Status s = Status::OK();
  XT_LAUNCH(IotaKernel, detail::BlocksFor(T), detail::kThreads, 0, st)(tokens_in, T);
  s = Check(cudaGetLastError(), "embedding_backward (iota) launch");
  if (s.ok())
    s = Check(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids, keys, tokens_in, tokens, n, 0,
                                              end_bit, st),
              "embedding_backward sort");
  if (s.ok()) {
    const int threads = H < detail::kThreads ? int((H + 31) / 32 * 32) : detail::kThreads;
    XT_LAUNCH(EmbeddingScatterKernel, detail::BlocksForItems(T), threads, 0, st)
    (dtable, dout, keys, tokens, T, H);
    s = Check(cudaGetLastError(), "embedding_backward (scatter) launch");
  }
  const Status freed = scratch.Release("embedding_backward scratch free");
  return s.ok() ? freed : s;
}

}  // namespace xt::cuda
