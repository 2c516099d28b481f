// RMSNorm backward (ops::rmsnorm_backward on the GPU). din: one warp per row. dw: no atomics;
// a first kernel sums fixed chunks of rows per column (in double), a second sums the chunks of
// each column in chunk order and adds the result to dw, so the result depends on N and C only.
#include <cuda_runtime.h>

#include <algorithm>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

using detail::kThreads;

constexpr int kRowsPerBlock = kThreads / 32;  // one warp per row

// With xhat = x * r: dx = r * (dy*w - xhat * mean(dy*w*xhat)), the mean's sum in double (as the
// CPU twin). One warp per row (as the forward), rows grid-strided; the warp's butterfly sum
// leaves the same bits in every lane.
__global__ void RmsnormBackwardRowsKernel(float* din, const float* dout, const float* in,
                                          const float* w, const float* rstd, int64_t N, int64_t C,
                                          bool accumulate_din) {
  const int lane = threadIdx.x % 32;
  for (int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32; n < N;
       n += int64_t(gridDim.x) * kRowsPerBlock) {  // uniform in the warp
    const float* x = in + n * C;                   // (C)
    const float* dy = dout + n * C;                // (C)
    float* dx = din + n * C;                       // (C)
    const float r = rstd[n];
    double dot = 0;
    for (int64_t c = lane; c < C; c += 32)
      dot += double(dy[c]) * double(w[c]) * double(x[c]) * double(r);
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float m = float(dot / double(C));
    for (int64_t c = lane; c < C; c += 32) {
      const float g = r * (dy[c] * w[c] - x[c] * r * m);
      dx[c] = accumulate_din ? dx[c] + g : g;
    }
  }
}

constexpr int kDwCols = 32;  // columns per block (threadIdx.x)
constexpr int kDwRows = 8;   // row lanes per block (threadIdx.y)

// Block (kDwCols, kDwRows); blockIdx.y = row chunk [chunk * rows_per_chunk, ...). Each thread
// sums its lane's rows of one column in order, the lanes are added in lane order. The chunk's
// column sums go to partial (chunks, C), or straight into dw when there is a single chunk
// (partial null).
__global__ void RmsnormDwPartialKernel(double* partial, float* dw, const float* dout,
                                       const float* in, const float* rstd, int64_t N, int64_t C,
                                       int64_t rows_per_chunk) {
  __shared__ double sums[kDwRows][kDwCols + 1];
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
  for (int64_t cb = blockIdx.x; cb * kDwCols < C; cb += gridDim.x) {  // uniform in the block
    const int64_t c = cb * kDwCols + threadIdx.x;
    double acc = 0;
    if (c < C) {
      for (int64_t n = r0 + threadIdx.y; n < r1; n += kDwRows)
        acc += double(dout[n * C + c]) * double(__fmul_rn(in[n * C + c], rstd[n]));
    }
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
      double s = sums[0][threadIdx.x];
      for (int i = 1; i < kDwRows; ++i) s += sums[i][threadIdx.x];
      if (partial)
        partial[chunk * C + c] = s;
      else
        dw[c] += float(s);
    }
    __syncthreads();
  }
}

// dw (C) += float(sum over chunks of partial (chunks, C)), the chunks in order.
__global__ void RmsnormDwFinishKernel(float* dw, const double* partial, int64_t chunks, int64_t C) {
  for (int64_t c = detail::GlobalThread(); c < C; c += detail::GridThreads()) {
    double s = 0;
    for (int64_t i = 0; i < chunks; ++i) s += partial[i * C + c];
    dw[c] += float(s);
  }
}

}  // namespace

Status RmsnormBackward(float* din, float* dw, const float* dout, const float* in, const float* w,
                       const float* rstd, int64_t N, int64_t C, bool accumulate_din, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("rmsnorm_backward", {N, C}));
  if (N == 0 || C == 0) return Status::OK();
  const cudaStream_t st = cudaStream_t(stream);
  XT_LAUNCH(RmsnormBackwardRowsKernel, detail::BlocksFor(N, kRowsPerBlock), kThreads, 0, st)
  (din, dout, in, w, rstd, N, C, accumulate_din);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "rmsnorm_backward (din) launch"));
  if (!dw) return Status::OK();  // a frozen weight

  // Row chunks: about 2048 blocks in all, at least 64 rows each; a function of N and C only.
  const int64_t col_blocks = (C + kDwCols - 1) / kDwCols;
  int64_t chunks = std::min<int64_t>((N + 63) / 64, std::max<int64_t>(1, 2048 / col_blocks));
  const int64_t rows_per_chunk = (N + chunks - 1) / chunks;
  chunks = (N + rows_per_chunk - 1) / rows_per_chunk;  // <= 2048: fits gridDim.y
  const dim3 block(kDwCols, kDwRows);
  const dim3 grid(unsigned(std::min<int64_t>(col_blocks, detail::kMaxBlocks)), unsigned(chunks));
  if (chunks == 1) {
    XT_LAUNCH(RmsnormDwPartialKernel, grid, block, 0, st)
    (nullptr, dw, dout, in, rstd, N, C, rows_per_chunk);
    return Check(cudaGetLastError(), "rmsnorm_backward (dw) launch");
  }
  detail::Scratch scratch(st);
  double* partial = nullptr;  // (chunks, C): chunks * C <= 2048 * 32 doubles
  XT_RETURN_IF_ERROR(scratch.Alloc(&partial, chunks * C, "rmsnorm_backward scratch"));
  XT_LAUNCH(RmsnormDwPartialKernel, grid, block, 0, st)
  (partial, dw, dout, in, rstd, N, C, rows_per_chunk);
  Status launched = Check(cudaGetLastError(), "rmsnorm_backward (dw partial) launch");
  if (launched.ok()) {
    XT_LAUNCH(RmsnormDwFinishKernel, detail::BlocksFor(C), kThreads, 0, st)(dw, partial, chunks, C);
    launched = Check(cudaGetLastError(), "rmsnorm_backward (dw finish) launch");
  }
  const Status freed = scratch.Release("rmsnorm_backward scratch free");
  return launched.ok() ? freed : launched;
}

}  // namespace xt::cuda
