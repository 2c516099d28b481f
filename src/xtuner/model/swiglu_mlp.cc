#include "xtuner/model/swiglu_mlp.h"

#include "xtuner/ops/ops.h"

namespace xt {

void SwigluMlpForward(float* out, std::vector<float>* gu, std::vector<float>* act, const float* x,
                      const float* w_gate_up, const float* w_down, int64_t T, int64_t H,
                      int64_t I) {
  gu->resize(T * 2 * I);
  act->resize(T * I);
  ops::linear_forward(gu->data(), x, w_gate_up, T, H, 2 * I);
  ops::swiglu_forward(act->data(), gu->data(), T, I);
  ops::linear_forward(out, act->data(), w_down, T, I, H);
}

void SwigluMlpBackward(float* dx, float* dw_gate_up, float* dw_down, const float* dout,
                       const float* x, const std::vector<float>& gu, const std::vector<float>& act,
                       const float* w_gate_up, const float* w_down, int64_t T, int64_t H, int64_t I,
                       bool accumulate_dx) {
  std::vector<float> dact(T * I), dgu(T * 2 * I);
  ops::linear_backward(dact.data(), dw_down, dout, act.data(), w_down, T, I, H);
  ops::swiglu_backward(dgu.data(), dact.data(), gu.data(), T, I);
  ops::linear_backward(dx, dw_gate_up, dgu.data(), x, w_gate_up, T, H, 2 * I, accumulate_dx);
}

}  // namespace xt
