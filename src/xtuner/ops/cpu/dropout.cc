// ops::dropout_mask: a token per iteration, its mask drawn by ops/dropout_mask.h.
#include "xtuner/ops/dropout_mask.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {

void dropout_mask(float* out, const float* in, int64_t T, int64_t C, const uint64_t* keys,
                  uint64_t salt, uint32_t threshold, bool add) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const uint64_t row_key = dropout_row_key(keys[t], salt);
    const float* x = in + t * C;
    float* y = out + t * C;
    for (int64_t c = 0; c < C; ++c) {
      const float kept = dropout_keep(row_key, c, threshold) ? x[c] : 0.0f;
      y[c] = add ? y[c] + kept : kept;
    }
  }
}

}  // namespace xt::ops
