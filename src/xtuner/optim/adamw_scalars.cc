#include "xtuner/optim/adamw_scalars.h"

#include <cmath>

namespace xt {

AdamWStepScalars MakeAdamWStepScalars(double beta1, double beta2, double eps, double weight_decay,
                                      int64_t step, double lr, float grad_scale, bool decay_run) {
  const double t = double(step);
  const double bc1 = 1 - std::pow(beta1, t);
  const double bc2 = 1 - std::pow(beta2, t);
  AdamWStepScalars s;
  s.w1 = float(1 - beta1);  // lerp weight
  s.low_weight = s.w1 < 0.5f;
  s.one_minus_w1 = 1 - s.w1;
  s.b2 = float(beta2);
  s.w2 = float(1 - beta2);
  s.bc2_sqrt = float(std::pow(bc2, 0.5));
  s.eps = float(eps);
  s.neg_step_size = float(-(lr / bc1));
  s.grad_scale = grad_scale;
  // lr * weight_decay rounded on its own, then 1 - it (this file is compiled without fused
  // multiply-adds, as adamw.cc), then to float.
  const float decay = float(1 - lr * weight_decay);
  s.decay = weight_decay != 0 && decay_run ? decay : 1.0f;
  return s;
}

}  // namespace xt
