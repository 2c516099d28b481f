// Exp: a vectorizable expf for the CPU kernels (attention, SwiGLU, cross-entropy).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace xt::ops {

// exp(x) as plain arithmetic (Cephes expf: 2^n * poly(r)), so that loops over it vectorize
// (std::exp and std::floor do not without -ffast-math); relative error ~2e-7 on [-87, 88];
// 0 below -87 (and for -inf); saturates at exp(88) ~ 1.65e38 above 88 (never inf or negative).
inline float Exp(float x) {
  float xc = std::min(std::max(x, -87.0f), 88.0f);
  float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln2): 1.5 * 2^23 trick
  float r = xc - n * 0.693359375f + n * 2.12194440e-4f;      // r = x - n ln2, |r| <= ln2 / 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float two_n = std::bit_cast<float>((int32_t(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * two_n;
}

}  // namespace xt::ops
