#include "xtuner/optim/clip.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace xt {
namespace {

// Sum of squares of one chunk in 8 interleaved double lanes (vectorisable, fixed order).
double ChunkSumOfSquares(const float* x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += double(x[i + j]) * double(x[i + j]);
  for (int j = 0; i < n; ++i, ++j) acc[j] += double(x[i]) * double(x[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

double sum_of_squares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t chunks = (n + kNormChunk - 1) / kNormChunk;
  if (chunks == 1) return ChunkSumOfSquares(x, n);
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kNormChunk;
    partial[c] = ChunkSumOfSquares(x + b, std::min(kNormChunk, n - b));
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

double grad_norm(const float* grads, int64_t n) { return std::sqrt(sum_of_squares(grads, n)); }

bool norm_is_finite(double total_norm) { return std::isfinite(total_norm); }

double clip_coef(double total_norm, double max_norm) {
  return std::min(1.0, max_norm / (total_norm + 1e-6));
}

void scale_grads(float* grads, int64_t n, float coef) {
#pragma omp parallel for schedule(static) if (n > 4096)
  for (int64_t i = 0; i < n; ++i) grads[i] *= coef;
}

double clip_grad_norm(float* grads, int64_t n, double max_norm) {
  const double norm = grad_norm(grads, n);
  if (!norm_is_finite(norm) || !(max_norm > 0)) return norm;
  const float coef = float(clip_coef(norm, max_norm));
  if (coef < 1.0f) scale_grads(grads, n, coef);
  return norm;
}

}  // namespace xt
