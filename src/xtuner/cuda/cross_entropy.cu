// The language-model head fused with cross-entropy on the GPU (chunked_cross_entropy's twin,
// loss_cuda.h). Per chunk of loss rows: gather the rows of h, logits = h_c @ w^T, one block per
// row for the softmax statistics and dlogits in place, then dh_c = dlogits @ w (scattered) and
// dw += dlogits^T @ h_c. The per-row losses stay on the device until one block sums them.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/loss/cross_entropy.h"

namespace xt::cuda {
namespace {

using detail::kThreads;

constexpr int kRowThreads = 512;  // threads per row of logits (a power of two)

// dst (c, H) = src (., H)[rows (c)].
__global__ void GatherRowsKernel(float* dst, const float* src, const int64_t* rows, int64_t c,
                                 int64_t H) {
  const int64_t n = c * H;
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) {
    const int64_t r = i / H;
    dst[i] = src[rows[r] * H + (i - r * H)];
  }
}

// dst (., H)[rows (c)] = src (c, H).
__global__ void ScatterRowsKernel(float* dst, const float* src, const int64_t* rows, int64_t c,
                                  int64_t H) {
  const int64_t n = c * H;
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads()) {
    const int64_t r = i / H;
    dst[rows[r] * H + (i - r * H)] = src[i];
  }
}

// One block (kRowThreads) per row of logits (c, V), rows grid-strided: m = max, s = sum exp(z - m)
// (expf in fp32, summed in double: the CPU's order of operations), loss[i] = m + log(s) - z[y].
// With grad, z becomes weight * (softmax - onehot(y)) in place, with the CPU's float operations
// (e * float(weight / s), then - float(weight) at y; no fused multiply-add).
__global__ void SoftmaxRowsKernel(float* logits, double* loss, const int32_t* ys, int64_t c,
                                  int64_t V, double weight, bool grad) {
  __shared__ float smax[kRowThreads];
  __shared__ double ssum[kRowThreads];
  const int tid = int(threadIdx.x);
  for (int64_t i = blockIdx.x; i < c; i += gridDim.x) {
    float* z = logits + i * V;
    const int32_t y = ys[i];
    const float zy = z[y];  // read before any thread overwrites the row
    float m = -INFINITY;
    for (int64_t v = tid; v < V; v += kRowThreads) m = fmaxf(m, z[v]);
    smax[tid] = m;
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s /= 2) {
      if (tid < s) smax[tid] = fmaxf(smax[tid], smax[tid + s]);
      __syncthreads();
    }
    m = smax[0];
    double sum = 0;
    for (int64_t v = tid; v < V; v += kRowThreads) {
      const float e = expf(z[v] - m);
      if (grad) z[v] = e;
      sum += double(e);
    }
    ssum[tid] = sum;
    __syncthreads();
    for (int s = kRowThreads / 2; s > 0; s /= 2) {
      if (tid < s) ssum[tid] += ssum[tid + s];
      __syncthreads();
    }
    const double total = ssum[0];
    if (tid == 0) loss[i] = double(m) + log(total) - double(zy);
    if (grad) {
      const float scale = float(weight / total), wf = float(weight);
      for (int64_t v = tid; v < V; v += kRowThreads) {
        float g = __fmul_rn(z[v], scale);
        if (v == y) g = __fsub_rn(g, wf);
        z[v] = g;
      }
    }
    __syncthreads();  // smax[0] and ssum[0] read by all before the next row writes them
  }
}

// *out = the sum of x (n) in double: one block (kThreads); thread j adds x[j], x[j + kThreads],
// ... in order, then a fixed tree. Deterministic for a given n.
__global__ void SumKernel(double* out, const double* x, int64_t n) {
  __shared__ double part[kThreads];
  const int tid = int(threadIdx.x);
  double s = 0;
  for (int64_t i = tid; i < n; i += kThreads) s += x[i];
  part[tid] = s;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h /= 2) {
    if (tid < h) part[tid] += part[tid + h];
    __syncthreads();
  }
  if (tid == 0) *out = part[0];
}

// The arguments, and the loss rows (positions with a target) and their targets into rows / ys
// (null: checked only). Nothing is queued.
Status CheckArguments(const int32_t* targets_host, int64_t T, int64_t H, int64_t V, const float* dh,
                      const float* dw, float dw_beta, std::vector<int64_t>* rows,
                      std::vector<int32_t>* ys) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("chunked_cross_entropy", {T, H, V}));
  if (T > 0 && targets_host == nullptr)
    return Status::Error("chunked_cross_entropy: targets is null");
  if (dw_beta != 0.0f && dw_beta != 1.0f)
    return Status::Error("chunked_cross_entropy: dw_beta must be 0 or 1, not " +
                         std::to_string(dw_beta));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t y = targets_host[t];
    if (y == kIgnoreIndex) continue;
    if (y < 0 || int64_t(y) >= V)
      return Status::Error("chunked_cross_entropy: target " + std::to_string(y) + " at position " +
                           std::to_string(t) + " is outside [0, " + std::to_string(V) +
                           ") and is not kIgnoreIndex (" + std::to_string(kIgnoreIndex) + ")");
    if (rows) rows->push_back(t), ys->push_back(y);
  }
  return Status::OK();
}

}  // namespace

Status ChunkedCrossEntropyQueued(double* total, Blas& blas, float* dh, float* dw, const float* h,
                                 const float* w, const int32_t* targets_host, int64_t T, int64_t H,
                                 int64_t V, double weight, int64_t chunk_rows, void* stream,
                                 GemmInput in, const void* w_bf16, float dw_beta) {
  // The loss rows and their targets, validated on the host.
  std::vector<int64_t> rows;
  std::vector<int32_t> ys;
  XT_RETURN_IF_ERROR(CheckArguments(targets_host, T, H, V, dh, dw, dw_beta, &rows, &ys));
  const cudaStream_t s = cudaStream_t(stream);
  if (dh && T * H > 0)
    XT_RETURN_IF_ERROR(Check(cudaMemsetAsync(dh, 0, size_t(T * H) * sizeof(float), s),
                             "chunked_cross_entropy dh"));
  const int64_t n = int64_t(rows.size());
  if (n == 0) {  // no loss row: the gradient is zero
    if (dw && dh && dw_beta == 0.0f && V * H > 0)
      XT_RETURN_IF_ERROR(Check(cudaMemsetAsync(dw, 0, size_t(V * H) * sizeof(float), s),
                               "chunked_cross_entropy dw"));
    return Check(cudaMemsetAsync(total, 0, sizeof(double), s), "chunked_cross_entropy loss");
  }
  if (chunk_rows <= 0) chunk_rows = DefaultLossChunkRows(V, true);
  const int64_t C = std::min(chunk_rows, n);
  const bool grad = dh != nullptr;
  const bool bf16 = in == GemmInput::kBf16;
  // bf16: the rounded rows and logits' gradients of up to kGpuLossGroupChunks chunks are kept, and
  // dw takes one product per group of chunks (K = the group's rows) instead of one per chunk: each
  // such product reads and writes all of dw (V, H) in fp32 (1.2 GiB at the benchmark's
  // vocabulary), so fewer of them move less memory, for (G - C) * (H + V) more bf16 scratch.
  const int64_t G = bf16 && grad ? std::min(n, kGpuLossGroupChunks * C) : C;

  detail::Scratch scratch(s);
  int64_t* rows_d = nullptr;
  int32_t* ys_d = nullptr;
  double* loss_d = nullptr;  // (n) per-row losses, then the total at loss_d[n]
  float *hc = nullptr, *logits = nullptr, *dhc = nullptr;
  XT_RETURN_IF_ERROR(scratch.Alloc(&rows_d, n, "chunked_cross_entropy scratch"));
  XT_RETURN_IF_ERROR(scratch.Alloc(&ys_d, n, "chunked_cross_entropy scratch"));
  XT_RETURN_IF_ERROR(scratch.Alloc(&loss_d, n + 1, "chunked_cross_entropy scratch"));
  XT_RETURN_IF_ERROR(scratch.Alloc(&hc, C * H, "chunked_cross_entropy scratch"));
  XT_RETURN_IF_ERROR(scratch.Alloc(&logits, C * V, "chunked_cross_entropy logits"));
  if (grad) XT_RETURN_IF_ERROR(scratch.Alloc(&dhc, C * H, "chunked_cross_entropy scratch"));
  // bf16 products: the weight's bf16 copy (given, or made here once), the gathered rows and the
  // logits' gradient rounded into scratch (a group's worth) before the products that read them.
  uint16_t *hc16 = nullptr, *dl16 = nullptr, *w16_own = nullptr;
  const void* w16 = w_bf16;
  if (bf16) {
    XT_RETURN_IF_ERROR(scratch.Alloc(&hc16, G * H, "chunked_cross_entropy scratch"));
    if (grad) XT_RETURN_IF_ERROR(scratch.Alloc(&dl16, G * V, "chunked_cross_entropy scratch"));
    if (!w16) {
      XT_RETURN_IF_ERROR(scratch.Alloc(&w16_own, V * H, "chunked_cross_entropy bf16 weight"));
      XT_RETURN_IF_ERROR(ToBf16(w16_own, w, V * H, stream));
      w16 = w16_own;
    }
  }
  // From pageable memory: staged before the call returns, so the vectors may go afterwards.
  XT_RETURN_IF_ERROR(Check(
      cudaMemcpyAsync(rows_d, rows.data(), size_t(n) * sizeof(int64_t), cudaMemcpyHostToDevice, s),
      "chunked_cross_entropy rows"));
  XT_RETURN_IF_ERROR(Check(
      cudaMemcpyAsync(ys_d, ys.data(), size_t(n) * sizeof(int32_t), cudaMemcpyHostToDevice, s),
      "chunked_cross_entropy targets"));

  for (int64_t g0 = 0; g0 < n; g0 += G) {  // groups of chunks (one chunk each but in bf16)
    const int64_t g = std::min(G, n - g0);
    for (int64_t c0 = g0; c0 < g0 + g; c0 += C) {
      const int64_t c = std::min(C, g0 + g - c0);
      uint16_t* hc16_c = bf16 ? hc16 + (c0 - g0) * H : nullptr;  // this chunk's rows in the group
      uint16_t* dl16_c = bf16 && grad ? dl16 + (c0 - g0) * V : nullptr;
      if (c * H > 0) {
        XT_LAUNCH(GatherRowsKernel, detail::BlocksFor(c * H), kThreads, 0, s)
        (hc, h, rows_d + c0, c, H);
        XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "chunked_cross_entropy gather"));
      }
      if (bf16) {
        XT_RETURN_IF_ERROR(ToBf16(hc16_c, hc, c * H, stream));
        XT_RETURN_IF_ERROR(blas.Gemm(logits, hc16_c, w16, c, V, H, false, true, 0.0f, in));
      } else {
        XT_RETURN_IF_ERROR(blas.Gemm(logits, hc, w, c, V, H, false, true, 0.0f, in));
      }
      XT_LAUNCH(SoftmaxRowsKernel, detail::BlocksForItems(c), kRowThreads, 0, s)
      (logits, loss_d + c0, ys_d + c0, c, V, weight, grad);
      XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "chunked_cross_entropy softmax"));
      if (!grad) continue;
      const void* dl = logits;  // (c, V) d loss / d logits, rounded in bf16 mode
      if (bf16) {
        XT_RETURN_IF_ERROR(ToBf16(dl16_c, logits, c * V, stream));
        dl = dl16_c;
      }
      XT_RETURN_IF_ERROR(  // (c, V) @ (V, H)
          blas.Gemm(dhc, dl, bf16 ? w16 : w, c, H, V, false, false, 0.0f, in));
      if (c * H > 0) {
        XT_LAUNCH(ScatterRowsKernel, detail::BlocksFor(c * H), kThreads, 0, s)
        (dh, dhc, rows_d + c0, c, H);
        XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "chunked_cross_entropy scatter"));
      }
      if (!bf16 && dw)
        XT_RETURN_IF_ERROR(  // (c, V)^T @ (c, H)
            blas.Gemm(dw, dl, hc, V, H, c, true, false, c0 == 0 ? dw_beta : 1.0f, in));
    }
    if (grad && bf16 && dw)  // the group's (g, V)^T @ (g, H)
      XT_RETURN_IF_ERROR(
          blas.Gemm(dw, dl16, hc16, V, H, g, true, false, g0 == 0 ? dw_beta : 1.0f, in));
  }
  XT_LAUNCH(SumKernel, 1, kThreads, 0, s)(loss_d + n, loss_d, n);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "chunked_cross_entropy sum"));
  return Check(cudaMemcpyAsync(total, loss_d + n, sizeof(double), cudaMemcpyDeviceToDevice, s),
               "chunked_cross_entropy loss copy");
}

Result<double> ChunkedCrossEntropy(Blas& blas, float* dh, float* dw, const float* h, const float* w,
                                   const int32_t* targets_host, int64_t T, int64_t H, int64_t V,
                                   double weight, int64_t chunk_rows, void* stream, GemmInput in,
                                   const void* w_bf16, float dw_beta) {
  // Bad arguments are errors before anything is queued (the scratch below included).
  XT_RETURN_IF_ERROR(CheckArguments(targets_host, T, H, V, dh, dw, dw_beta, nullptr, nullptr));
  const cudaStream_t s = cudaStream_t(stream);
  detail::Scratch scratch(s);
  double* total_d = nullptr;
  XT_RETURN_IF_ERROR(scratch.Alloc(&total_d, 1, "chunked_cross_entropy loss"));
  XT_RETURN_IF_ERROR(ChunkedCrossEntropyQueued(total_d, blas, dh, dw, h, w, targets_host, T, H, V,
                                               weight, chunk_rows, stream, in, w_bf16, dw_beta));
  double total = 0;
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpyAsync(&total, total_d, sizeof(double), cudaMemcpyDeviceToHost, s),
            "chunked_cross_entropy loss copy"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(s), "chunked_cross_entropy"));
  return total;
}

}  // namespace xt::cuda
