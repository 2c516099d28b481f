#include "xtuner/model/init.h"

#include <cmath>

#include "xtuner/core/rng.h"
#include "xtuner/model/lora.h"

namespace xt {

void InitTensor(const ParamInfo& info, double std, uint64_t seed, float* w) {
  // Each tensor's stream depends on the seed and its offset only: adding a parameter elsewhere
  // does not change the others.
  uint64_t s = seed ^ (0x5851f42d4c957f2dull * uint64_t(info.offset + 1));
  const int64_t n = NumElements(info.shape);
  if (info.lora) return InitLoraTensor(info, seed, w);
  if (info.is_norm || info.no_grad || info.is_bias) {  // norms start at one, the rest at zero
    for (int64_t i = 0; i < n; ++i) w[i] = info.is_norm ? 1.0f : 0.0f;
    return;
  }
  for (int64_t i = 0; i < n; i += 2) {  // Box-Muller: two normals per pair of uniforms
    const double r = std::sqrt(-2.0 * std::log(UniformOpen01(&s))),
                 a = 2.0 * M_PI * UniformOpen01(&s);
    w[i] = float(std * r * std::cos(a));
    if (i + 1 < n) w[i + 1] = float(std * r * std::sin(a));
  }
}

void InitRandom(Transformer* model, double std, uint64_t seed) {
  float* p = model->params().f32();
  for (const ParamInfo& info : model->layout().params())
    InitTensor(info, std, seed, p + info.offset);
}

}  // namespace xt
