#include "xtuner/model/swiglu_mlp.h"

#include "xtuner/ops/ops.h"

namespace xt {

void SwigluMlpForward(float* out, std::vector<float>* gu, std::vector<float>* act, const float* x,
                      const Linear& gate_up, const Linear& down, int64_t T, int64_t H, int64_t I) {
  gu->resize(T * 2 * I);
  act->resize(T * I);
  LinearForward(gu->data(), x, gate_up, T, H, 2 * I);
  ops::swiglu_forward(act->data(), gu->data(), T, I);
  LinearForward(out, act->data(), down, T, I, H);
}

void SwigluMlpBackward(float* dx, const float* dout, const float* x, const std::vector<float>& gu,
                       const std::vector<float>& act, const Linear& gate_up, const Linear& down,
                       int64_t T, int64_t H, int64_t I, bool accumulate_dx) {
  std::vector<float> dact(T * I), dgu(T * 2 * I);
  LinearBackward(dact.data(), dout, act.data(), down, T, I, H);
  ops::swiglu_backward(dgu.data(), dact.data(), gu.data(), T, I);
  LinearBackward(dx, dgu.data(), x, gate_up, T, H, 2 * I, accumulate_dx);
}

}  // namespace xt
