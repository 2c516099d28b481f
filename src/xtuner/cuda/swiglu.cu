// SwiGLU (ops::swiglu_forward / swiglu_backward on the GPU) and GPT-OSS's clamped GLU
// (ops::gpt_oss_glu_forward / backward): one thread per output element of the (N, I) half,
// grid-strided, int64 indices.
#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

// exp with the argument clamped at 88 as the CPU's Exp (ops/cpu/fast_exp.h) saturates, so that
// silu(-inf) and its gradient stay finite the same way. Evaluated in double and rounded (0.5 ulp
// in float; FP64 is cheap here: the kernels are bound by memory), but the CPU's Exp is a
// polynomial (~2e-7 relative), hence agreement to ~1e-6 relative rather than bit for bit.
__device__ inline float ExpSat(float x) { return float(exp(double(x < 88.0f ? x : 88.0f))); }

// h16 (optional): the input rounded to bf16, for a backward that reads it instead of h.
template <class Out>
__global__ void SwigluForwardKernel(Out* out, uint16_t* h16, const float* h, int64_t N, int64_t I) {
  const int64_t total = N * I;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t n = q / I, i = q - n * I;
    const float g = h[n * 2 * I + i];
    const float u = h[n * 2 * I + I + i];
    detail::StoreAs(out + q, g / (1.0f + ExpSat(-g)) * u);
    if (h16) {
      detail::StoreAs(h16 + n * 2 * I + i, g);
      detail::StoreAs(h16 + n * 2 * I + I + i, u);
    }
  }
}

// d/dg [g * sig(g)] = sig(g) * (1 + g * (1 - sig(g))).
template <class Out, class In>
__global__ void SwigluBackwardKernel(Out* dh, const float* dout, const In* h, int64_t N,
                                     int64_t I) {
  const int64_t total = N * I;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t n = q / I, i = q - n * I;
    const float g = detail::LoadAs(h + n * 2 * I + i);
    const float u = detail::LoadAs(h + n * 2 * I + I + i);
    const float dy = dout[q];
    const float sig = 1.0f / (1.0f + ExpSat(-g));
    detail::StoreAs(dh + n * 2 * I + I + i, dy * g * sig);
    detail::StoreAs(dh + n * 2 * I + i, dy * u * sig * (1.0f + g * (1.0f - sig)));
  }
}

// std::min(x, hi) and std::clamp(x, lo, hi) as the CPU twin computes them: a NaN passes through
// (fminf / fmaxf would turn it into a limit and hide a diverging run).
__device__ inline float MinAsStd(float x, float hi) { return hi < x ? hi : x; }
__device__ inline float ClampAsStd(float x, float lo, float hi) {
  return x < lo ? lo : (hi < x ? hi : x);
}

// GPT-OSS: g = min(gate, limit), u = clamp(up, -limit, limit), out = (u + 1) g sigmoid(alpha g),
// the CPU twin's expressions; h16 as in SwigluForwardKernel.
template <class Out>
__global__ void GluForwardKernel(Out* out, uint16_t* h16, const float* h, int64_t N, int64_t I,
                                 float alpha, float limit) {
  const int64_t total = N * I;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t n = q / I, i = q - n * I;
    const float gate = h[n * 2 * I + i], up = h[n * 2 * I + I + i];
    const float g = MinAsStd(gate, limit), u = ClampAsStd(up, -limit, limit);
    detail::StoreAs(out + q, (u + 1.0f) * (g / (1.0f + ExpSat(-alpha * g))));
    if (h16) {
      detail::StoreAs(h16 + n * 2 * I + i, gate);
      detail::StoreAs(h16 + n * 2 * I + I + i, up);
    }
  }
}

// With s = sigmoid(alpha g): d/dg [g s] = s (1 + alpha g (1 - s)); zero where the clamp held
// the input.
template <class Out, class In>
__global__ void GluBackwardKernel(Out* dh, const float* dout, const In* h, int64_t N, int64_t I,
                                  float alpha, float limit) {
  const int64_t total = N * I;
  for (int64_t q = detail::GlobalThread(); q < total; q += detail::GridThreads()) {
    const int64_t n = q / I, i = q - n * I;
    const float gate = detail::LoadAs(h + n * 2 * I + i);
    const float up = detail::LoadAs(h + n * 2 * I + I + i);
    const float g = MinAsStd(gate, limit), u = ClampAsStd(up, -limit, limit);
    const float dy = dout[q];
    const float sig = 1.0f / (1.0f + ExpSat(-alpha * g));
    detail::StoreAs(dh + n * 2 * I + I + i, up >= -limit && up <= limit ? dy * g * sig : 0.0f);
    detail::StoreAs(
        dh + n * 2 * I + i,
        gate <= limit ? dy * (u + 1.0f) * sig * (1.0f + alpha * g * (1.0f - sig)) : 0.0f);
  }
}

template <class Out>
Status GluForward(Out* out, uint16_t* h16, const float* h, int64_t N, int64_t I, float alpha,
                  float limit, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("gpt_oss_glu_forward", {N, I}));
  if (N == 0 || I == 0) return Status::OK();
  XT_LAUNCH(GluForwardKernel<Out>, detail::BlocksFor(N * I), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, h16, h, N, I, alpha, limit);
  return Check(cudaGetLastError(), "gpt_oss_glu_forward launch");
}

template <class Out, class In>
Status GluBackward(Out* dh, const float* dout, const In* h, int64_t N, int64_t I, float alpha,
                   float limit, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("gpt_oss_glu_backward", {N, I}));
  if (N == 0 || I == 0) return Status::OK();
  XT_LAUNCH((GluBackwardKernel<Out, In>), detail::BlocksFor(N * I), detail::kThreads, 0,
            cudaStream_t(stream))
  (dh, dout, h, N, I, alpha, limit);
  return Check(cudaGetLastError(), "gpt_oss_glu_backward launch");
}

template <class Out>
Status Forward(Out* out, uint16_t* h16, const float* h, int64_t N, int64_t I, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("swiglu_forward", {N, I}));
  if (N == 0 || I == 0) return Status::OK();
  XT_LAUNCH(SwigluForwardKernel<Out>, detail::BlocksFor(N * I), detail::kThreads, 0,
            cudaStream_t(stream))
  (out, h16, h, N, I);
  return Check(cudaGetLastError(), "swiglu_forward launch");
}

template <class Out, class In>
Status Backward(Out* dh, const float* dout, const In* h, int64_t N, int64_t I, void* stream) {
  XT_RETURN_IF_ERROR(detail::CheckSizes("swiglu_backward", {N, I}));
  if (N == 0 || I == 0) return Status::OK();
  XT_LAUNCH((SwigluBackwardKernel<Out, In>), detail::BlocksFor(N * I), detail::kThreads, 0,
            cudaStream_t(stream))
  (dh, dout, h, N, I);
  return Check(cudaGetLastError(), "swiglu_backward launch");
}

}  // namespace

Status SwigluForward(float* out, const float* h, int64_t N, int64_t I, void* stream) {
  return Forward(out, nullptr, h, N, I, stream);
}
Status SwigluForward(uint16_t* out, const float* h, int64_t N, int64_t I, void* stream) {
  return Forward(out, nullptr, h, N, I, stream);
}
Status SwigluForward(uint16_t* out, uint16_t* h16, const float* h, int64_t N, int64_t I,
                     void* stream) {
  return Forward(out, h16, h, N, I, stream);
}

Status SwigluBackward(float* dh, const float* dout, const float* h, int64_t N, int64_t I,
                      void* stream) {
  return Backward(dh, dout, h, N, I, stream);
}
Status SwigluBackward(uint16_t* dh, const float* dout, const float* h, int64_t N, int64_t I,
                      void* stream) {
  return Backward(dh, dout, h, N, I, stream);
}
Status SwigluBackward(uint16_t* dh, const float* dout, const uint16_t* h16, int64_t N, int64_t I,
                      void* stream) {
  return Backward(dh, dout, h16, N, I, stream);
}

Status GptOssGluForward(float* out, const float* h, int64_t N, int64_t I, float alpha, float limit,
                        void* stream) {
  return GluForward(out, nullptr, h, N, I, alpha, limit, stream);
}
Status GptOssGluForward(uint16_t* out, uint16_t* h16, const float* h, int64_t N, int64_t I,
                        float alpha, float limit, void* stream) {
  return GluForward(out, h16, h, N, I, alpha, limit, stream);
}
Status GptOssGluBackward(float* dh, const float* dout, const float* h, int64_t N, int64_t I,
                         float alpha, float limit, void* stream) {
  return GluBackward(dh, dout, h, N, I, alpha, limit, stream);
}
Status GptOssGluBackward(uint16_t* dh, const float* dout, const uint16_t* h16, int64_t N, int64_t I,
                         float alpha, float limit, void* stream) {
  return GluBackward(dh, dout, h16, N, I, alpha, limit, stream);
}

}  // namespace xt::cuda
