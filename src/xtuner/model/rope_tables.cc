#include "xtuner/model/rope_tables.h"

#include <cmath>

namespace xt {

void ComputeRopeTables(const Batch& b, int64_t head_dim, double rope_theta, std::vector<float>* cos,
                       std::vector<float>* sin) {
  const int64_t T = b.num_tokens(), half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = 1.0f / std::pow(float(rope_theta), float(2 * i) / float(head_dim));
  cos->resize(T * half);
  sin->resize(T * half);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(b.positions[t]) * inv_freq[i];
      (*cos)[t * half + i] = std::cos(angle);
      (*sin)[t * half + i] = std::sin(angle);
    }
}

}  // namespace xt
