#include "xtuner/model/rope_tables.h"

#include <algorithm>
#include <cmath>

namespace xt {

namespace {

// YaRN's dimension at which a frequency makes `rotations` turns over the original context.
double CorrectionDim(double rotations, double dim, double base, double original) {
  return dim * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(base));
}

}  // namespace

std::vector<float> RopeInvFreq(const ModelConfig& cfg) {
  const int64_t dim = cfg.rope_dim(), half = dim / 2;
  const float base = float(cfg.rope_theta);
  std::vector<float> pos_freq(half), inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    pos_freq[i] = std::pow(base, float(2 * i) / float(dim));
    inv_freq[i] = 1.0f / pos_freq[i];
  }
  const RopeScaling& y = cfg.rope_scaling;
  if (!y.yarn) return inv_freq;
  const double original = double(y.original_max_position_embeddings);
  double low = CorrectionDim(y.beta_fast, double(dim), cfg.rope_theta, original);
  double high = CorrectionDim(y.beta_slow, double(dim), cfg.rope_theta, original);
  if (y.truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // as transformers: no singular ramp
  // As torch: (arange - low) / (high - low), the two Python floats rounded to float32 once.
  const float lo = float(low), span = float(high - low), factor = float(y.factor);
  for (int64_t i = 0; i < half; ++i) {
    const float extrapolation = inv_freq[i], interpolation = 1.0f / (factor * pos_freq[i]);
    const float ramp = std::clamp((float(i) - lo) / span, 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // the extrapolated share
    inv_freq[i] = interpolation * (1.0f - keep) + extrapolation * keep;
  }
  return inv_freq;
}

void ComputeRopeTables(const Batch& b, const ModelConfig& cfg, std::vector<float>* cos,
                       std::vector<float>* sin) {
  const int64_t T = b.num_tokens(), half = cfg.rope_dim() / 2;
  const std::vector<float> inv_freq = RopeInvFreq(cfg);
  const float af = float(cfg.rope_scaling.attention_factor);
  cos->resize(T * half);
  sin->resize(T * half);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(b.positions[t]) * inv_freq[i];
      (*cos)[t * half + i] = std::cos(angle) * af;
      (*sin)[t * half + i] = std::sin(angle) * af;
    }
}

}  // namespace xt
