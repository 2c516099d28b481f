// The SwiGLU MLP on the op layer, as a dense layer and DeepSeek-V3's shared experts run it:
//   gu (T, 2I) = x (T, H) @ [gate | up]^T,  act (T, I) = silu(gate) * up,  out (T, H) = act @
//   down^T
// with gate_up (2I, H) and down (H, I) as ParamLayout stores them (and their LoRA adapters).
// Private to model/.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/model/linear.h"

namespace xt {

// out (T, H) assigned; gu and act resized and kept for the backward.
void SwigluMlpForward(float* out, std::vector<float>* gu, std::vector<float>* act, const float* x,
                      const Linear& gate_up, const Linear& down, int64_t T, int64_t H, int64_t I);

// dx (T, H) assigned, or added when accumulate_dx; the layers' gradients +=.
void SwigluMlpBackward(float* dx, const float* dout, const float* x, const std::vector<float>& gu,
                       const std::vector<float>& act, const Linear& gate_up, const Linear& down,
                       int64_t T, int64_t H, int64_t I, bool accumulate_dx);

}  // namespace xt
