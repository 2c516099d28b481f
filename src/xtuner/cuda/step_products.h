// The matmuls of one CudaModel step (cuda/model_cuda.cc), in fp32 or in bf16 (bf16 operands,
// fp32 sums and outputs). In bf16 mode each operand comes from where it is already bf16 (a
// pointer the caller gives, or its weight unit's bf16 copy, Bf16Copies::Find) or is rounded
// right before its product into one of two scratch buffers, which grow to the largest operand
// and last as long as the object (the step). Every product into a gradient takes its beta from
// GradWrites: written where the gradient is blank, added otherwise.
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"
#include "xtuner/cuda/bf16_copies.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/grad_writes.h"

namespace xt::cuda {

class StepProducts {
 public:
  // experts: how many experts the grouped products run (the model's, or this rank's slice under
  // expert parallelism). The references outlive the object; work is queued on `stream`.
  StepProducts(Blas& blas, const Bf16Copies& units16, GradWrites& writes, bool bf16,
               int64_t experts, void* stream)
      : blas_(blas),
        units16_(units16),
        writes_(writes),
        bf16_(bf16),
        experts_(experts),
        stream_(stream) {}
  StepProducts(const StepProducts&) = delete;
  StepProducts& operator=(const StepProducts&) = delete;

  // out (rows, out_dim) = in (rows, in_dim) @ w^T. fp32: in fp32 even in bf16 mode (the router);
  // in16: the input already in bf16 (bf16 mode; in may then be null).
  Status Linear(float* out, const float* in, const float* w, int64_t rows, int64_t in_dim,
                int64_t out_dim, bool fp32 = false, const uint16_t* in16 = nullptr);
  // din (rows, in_dim) = dout @ w (assigned, or added when `accumulate`; none when din is null),
  // dw (out_dim, in_dim) = or += dout^T @ in (none when dw is null: a frozen weight). In bf16 mode
  // dout is rounded once for both products; in16 / dout16: the input / output gradient already in
  // bf16.
  Status LinearBackward(float* din, float* dw, const float* dout, const float* in, const float* w,
                        int64_t rows, int64_t in_dim, int64_t out_dim, bool accumulate,
                        bool fp32 = false, const uint16_t* in16 = nullptr,
                        const uint16_t* dout16 = nullptr);
  // The experts' products over x's `rows` rows, grouped by `offsets` (experts + 1):
  // y = x w_e^T per expert; x16: the rows already in bf16.
  Status GroupedForward(float* y, const float* x, const float* w, const int32_t* offsets,
                        int64_t rows, int64_t in_dim, int64_t out_dim,
                        const uint16_t* x16 = nullptr);
  // dx = dy w_e, dw_e = or += dy^T x per expert (none when dw is null: frozen experts); dy16 /
  // x16: already in bf16.
  Status GroupedBackward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                         const int32_t* offsets, int64_t rows, int64_t in_dim, int64_t out_dim,
                         const uint16_t* dy16 = nullptr, const uint16_t* x16 = nullptr);

 private:
  // x's bf16 operand: `given`, its unit's bf16 copy, or x (n elements) rounded into `scratch`.
  // n < 0: an expert weight, which must be in an acquired unit.
  Result<const void*> Operand(DeviceArray<uint16_t>& scratch, const float* x, int64_t n,
                              const uint16_t* given = nullptr);

  Blas& blas_;
  const Bf16Copies& units16_;
  GradWrites& writes_;
  const bool bf16_;
  const int64_t experts_;
  void* const stream_;
  DeviceArray<uint16_t> scratch_a_, scratch_b_;
};

}  // namespace xt::cuda
