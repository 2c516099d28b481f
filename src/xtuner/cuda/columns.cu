// Column moves on the GPU (ops::copy_columns, sum_head_columns for multi-head latent attention;
// ops::scale_columns for LoRA's adapters): one thread per output element, grid-strided, int64
// indices.
#include <cuda_runtime.h>

#include <string>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

// Output element (n, i) of the copy: in's column i of its order, of input row n / repeat.
__global__ void CopyColumnsKernel(float* out, int64_t out_stride, int64_t out_at, const float* in,
                                  int64_t in_stride, int64_t in_at, int64_t N, int64_t width,
                                  int order, int64_t repeat) {
  const int64_t half = width / 2, total = N * width;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t n = q / width, i = q - n * width;
    const int64_t pair = i < half ? 2 * i : 2 * (i - half) + 1;  // i's place interleaved
    float* y = out + n * out_stride + out_at;
    const float* x = in + (n / repeat) * in_stride + in_at;
    if (order == int(ops::ColumnOrder::kDeinterleave))
      y[i] = x[pair];
    else if (order == int(ops::ColumnOrder::kInterleave))
      y[pair] = x[i];
    else
      y[i] = x[i];
  }
}

__global__ void SumHeadColumnsKernel(float* out, const float* in, int64_t in_stride, int64_t at,
                                     int64_t T, int64_t Hn, int64_t width) {
  const int64_t total = T * width;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t t = q / width, i = q - t * width;
    float acc = 0.0f;
    for (int64_t h = 0; h < Hn; ++h) acc += in[(t * Hn + h) * in_stride + at + i];
    out[q] = acc;
  }
}

// Output element (n, i): scale * in[n, in_at + i], assigned or added, rounded as the CPU's
// separate multiply and add (no contraction into a fused multiply-add).
template <class In>
__global__ void ScaleColumnsKernel(float* out, int64_t out_stride, int64_t out_at, const In* in,
                                   int64_t in_stride, int64_t in_at, int64_t N, int64_t width,
                                   float scale, bool add) {
  const int64_t total = N * width;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t n = q / width, i = q - n * width;
    float* y = out + n * out_stride + out_at + i;
    const float term = __fmul_rn(scale, detail::LoadAs(in + n * in_stride + in_at + i));
    *y = add ? __fadd_rn(*y, term) : term;
  }
}

template <class In>
Status LaunchScaleColumns(float* out, int64_t out_stride, int64_t out_at, const In* in,
                          int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                          bool add, void* stream) {
  XT_RETURN_IF_ERROR(
      detail::CheckSizes("scale_columns", {out_stride, out_at, in_stride, in_at, N, width}));
  if (N == 0 || width == 0) return Status::OK();
  XT_LAUNCH(ScaleColumnsKernel<In>, detail::BlocksFor(N * width), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, out_stride, out_at, in, in_stride, in_at, N, width, scale, add);
  return Check(cudaGetLastError(), "scale_columns launch");
}

}  // namespace

Status ScaleColumns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                    int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                    bool add, void* stream) {
  return LaunchScaleColumns(out, out_stride, out_at, in, in_stride, in_at, N, width, scale, add,
                            stream);
}

Status ScaleColumns(float* out, int64_t out_stride, int64_t out_at, const uint16_t* in,
                    int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                    bool add, void* stream) {
  return LaunchScaleColumns(out, out_stride, out_at, in, in_stride, in_at, N, width, scale, add,
                            stream);
}

Status CopyColumns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                   int64_t in_stride, int64_t in_at, int64_t N, int64_t width,
                   ops::ColumnOrder order, int64_t repeat, void* stream) {
  XT_RETURN_IF_ERROR(
      detail::CheckSizes("copy_columns", {out_stride, out_at, in_stride, in_at, N, width}));
  if (repeat < 1)
    return Status::Error("copy_columns: repeat must be >= 1, got " + std::to_string(repeat));
  if (order != ops::ColumnOrder::kSame && width % 2 != 0)
    return Status::Error("copy_columns: an odd width (" + std::to_string(width) +
                         ") has no RoPE pair order");
  if (N == 0 || width == 0) return Status::OK();
  XT_LAUNCH(CopyColumnsKernel, detail::BlocksFor(N * width), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, out_stride, out_at, in, in_stride, in_at, N, width, int(order), repeat);
  return Check(cudaGetLastError(), "copy_columns launch");
}

Status SumHeadColumns(float* out, const float* in, int64_t in_stride, int64_t at, int64_t T,
                      int64_t Hn, int64_t width, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("sum_head_columns", {in_stride, at, T, Hn, width}));
  if (T == 0 || width == 0) return Status::OK();
  XT_LAUNCH(SumHeadColumnsKernel, detail::BlocksFor(T * width), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, in, in_stride, at, T, Hn, width);
  return Check(cudaGetLastError(), "sum_head_columns launch");
}

}  // namespace xt::cuda
