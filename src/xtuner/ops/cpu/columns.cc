// Column moves between row-major tensors (multi-head latent attention's assembly of q, k and v
// from its projections, model/transformer_mla.cc): copies, RoPE's pair orders, one row to many
// and the sum that is its gradient; and scaled columns (a LoRA adapter's terms, model/linear.cc).
#include "xtuner/ops/ops.h"

namespace xt::ops {

void copy_columns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                  int64_t in_stride, int64_t in_at, int64_t N, int64_t width, ColumnOrder order,
                  int64_t repeat) {
  const int64_t half = width / 2;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* y = out + n * out_stride + out_at;
    const float* x = in + (n / repeat) * in_stride + in_at;
    for (int64_t i = 0; i < width; ++i) {
      const int64_t pair = i < half ? 2 * i : 2 * (i - half) + 1;  // i's place interleaved
      if (order == ColumnOrder::kDeinterleave)
        y[i] = x[pair];
      else if (order == ColumnOrder::kInterleave)
        y[pair] = x[i];
      else
        y[i] = x[i];
    }
  }
}

void sum_head_columns(float* out, const float* in, int64_t in_stride, int64_t at, int64_t T,
                      int64_t Hn, int64_t width) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < width; ++i) {
      float acc = 0.0f;
      for (int64_t h = 0; h < Hn; ++h) acc += in[(t * Hn + h) * in_stride + at + i];
      out[t * width + i] = acc;
    }
}

void scale_columns(float* out, int64_t out_stride, int64_t out_at, const float* in,
                   int64_t in_stride, int64_t in_at, int64_t N, int64_t width, float scale,
                   bool add) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* y = out + n * out_stride + out_at;
    const float* x = in + n * in_stride + in_at;
    for (int64_t i = 0; i < width; ++i) {
      const float term = scale * x[i];
      y[i] = add ? y[i] + term : term;
    }
  }
}

}  // namespace xt::ops
