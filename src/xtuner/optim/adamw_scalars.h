// The float scalars of one AdamW step over one run of the slab, formed as torch forms them (in
// double, rounded to float where torch's kernels see float32). Shared by the CPU step
// (optim/adamw.cc) and the CUDA kernel (cuda/adamw.cu), which apply the same float operations in
// the same order to every element, so the two give identical bits.
#pragma once

#include <cstdint>

namespace xt {

struct AdamWStepScalars {
  float decay;      // 1 - lr * weight_decay, or exactly 1 where there is no decay
  bool low_weight;  // torch's lerp branch: weight w1 < 0.5
  float w1, one_minus_w1, b2, w2, bc2_sqrt, eps, neg_step_size, grad_scale;
};

// Step `step` (1-based: the optimizer's count after its increment) with learning rate lr;
// `decay_run`: the run has weight decay enabled; grad_scale: the clipping coefficient the
// gradients are multiplied by as they are read (1: none).
AdamWStepScalars MakeAdamWStepScalars(double beta1, double beta2, double eps, double weight_decay,
                                      int64_t step, double lr, float grad_scale, bool decay_run);

}  // namespace xt
