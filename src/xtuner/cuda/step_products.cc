#include "xtuner/cuda/step_products.h"

#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {

Result<const void*> StepProducts::Operand(DeviceArray<uint16_t>& scratch, const float* x, int64_t n,
                                          const uint16_t* given) {
  if (given) return static_cast<const void*>(given);
  if (const uint16_t* w = units16_.Find(x)) return static_cast<const void*>(w);
  if (n < 0)  // the experts' weights, whose size the caller does not pass
    return Status::Error("CudaModel: an expert weight outside the acquired units");
  XT_RETURN_IF_ERROR(scratch.Reserve(n, stream_));
  XT_RETURN_IF_ERROR(ToBf16(scratch.get(), x, n, stream_));
  return static_cast<const void*>(scratch.get());
}

Status StepProducts::Linear(float* out, const float* in, const float* w, int64_t rows,
                            int64_t in_dim, int64_t out_dim, bool fp32, const uint16_t* in16) {
  if (!bf16_ || fp32)
    return blas_.Gemm(out, in, w, rows, out_dim, in_dim, false, true, 0.0f, GemmInput::kF32);
  XT_ASSIGN_OR_RETURN(const void* a16, Operand(scratch_a_, in, rows * in_dim, in16));
  XT_ASSIGN_OR_RETURN(const void* b16, Operand(scratch_b_, w, out_dim * in_dim));
  return blas_.Gemm(out, a16, b16, rows, out_dim, in_dim, false, true, 0.0f, GemmInput::kBf16);
}

Status StepProducts::LinearBackward(float* din, float* dw, const float* dout, const float* in,
                                    const float* w, int64_t rows, int64_t in_dim, int64_t out_dim,
                                    bool accumulate, bool fp32, const uint16_t* in16,
                                    const uint16_t* dout16) {
  const float dw_beta = writes_.Beta(dw, out_dim * in_dim);
  const float din_beta = accumulate ? 1.0f : 0.0f;
  if (!bf16_ || fp32) {
    if (din)
      XT_RETURN_IF_ERROR(
          blas_.Gemm(din, dout, w, rows, in_dim, out_dim, false, false, din_beta, GemmInput::kF32));
    if (!dw) return Status::OK();
    return blas_.Gemm(dw, dout, in, out_dim, in_dim, rows, true, false, dw_beta, GemmInput::kF32);
  }
  XT_ASSIGN_OR_RETURN(const void* g16, Operand(scratch_a_, dout, rows * out_dim, dout16));
  XT_ASSIGN_OR_RETURN(const void* w16, Operand(scratch_b_, w, out_dim * in_dim));
  if (din)
    XT_RETURN_IF_ERROR(
        blas_.Gemm(din, g16, w16, rows, in_dim, out_dim, false, false, din_beta, GemmInput::kBf16));
  if (!dw) return Status::OK();
  XT_ASSIGN_OR_RETURN(const void* x16, Operand(scratch_b_, in, rows * in_dim, in16));
  return blas_.Gemm(dw, g16, x16, out_dim, in_dim, rows, true, false, dw_beta, GemmInput::kBf16);
}

Status StepProducts::GroupedForward(float* y, const float* x, const float* w,
                                    const int32_t* offsets, int64_t rows, int64_t in_dim,
                                    int64_t out_dim, const uint16_t* x16) {
  if (!bf16_)
    return blas_.GroupedForward(y, x, w, offsets, experts_, in_dim, out_dim, GemmInput::kF32);
  XT_ASSIGN_OR_RETURN(const void* a16, Operand(scratch_a_, x, rows * in_dim, x16));
  XT_ASSIGN_OR_RETURN(const void* w16, Operand(scratch_b_, w, -1));
  return blas_.GroupedForward(y, a16, w16, offsets, experts_, in_dim, out_dim, GemmInput::kBf16);
}

Status StepProducts::GroupedBackward(float* dx, float* dw, const float* dy, const float* x,
                                     const float* w, const int32_t* offsets, int64_t rows,
                                     int64_t in_dim, int64_t out_dim, const uint16_t* dy16,
                                     const uint16_t* x16) {
  const float dw_beta = writes_.Beta(dw, experts_ * out_dim * in_dim);
  if (!bf16_)
    return blas_.GroupedBackward(dx, dw, dy, x, w, offsets, experts_, in_dim, out_dim,
                                 GemmInput::kF32, dw_beta);
  XT_ASSIGN_OR_RETURN(const void* g16, Operand(scratch_a_, dy, rows * out_dim, dy16));
  const void* a16 = nullptr;  // x is read only for dw
  if (dw) {
    XT_ASSIGN_OR_RETURN(a16, Operand(scratch_b_, x, rows * in_dim, x16));
  }
  XT_ASSIGN_OR_RETURN(const void* w16, Operand(scratch_b_, w, -1));
  return blas_.GroupedBackward(dx, dw, g16, a16, w16, offsets, experts_, in_dim, out_dim,
                               GemmInput::kBf16, dw_beta);
}

}  // namespace xt::cuda
