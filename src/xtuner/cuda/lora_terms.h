// LoRA on the GPU: the adapters' terms of one linear layer in CudaModel's step, model/linear.cc's
// LinearForward / LinearBackward after their weight's product, over StepProducts (fp32, or bf16
// operands with fp32 sums: the adapters' A and B come from their unit's bf16 copy like every
// weight). For each adapter of the weight (ParamLayout's LoraPiece: A (r, in), B (rows, r) on
// output columns [row0, row0 + rows), scale s = LoraSpec::scale()):
//   forward   z = in A^T (T, r),  out[:, row0 : row0 + rows] += s * z B^T
//   backward  dy = s * dout[:, row0 : row0 + rows],  dB (+)= dy^T z,  dz = dy B,
//             dA (+)= dz^T in,  din += dz A
// z is made again in the backward (T x r floats, as the CPU does), so nothing is kept between
// the two. A weight without adapters costs nothing. Scratch: (T, r) and (T, rows) floats per
// adapter, freed on the stream as each call ends.
// With LoRA's dropout (noise: the batch's keys on the device) `in` is first masked by
// cuda::DropoutMask (its bf16 copy in16 where given, else in: (T, in) scratch of that type), s
// is LoraSpec::dropout_scale(), and the backward's dz A goes through (T, in) fp32 scratch to be
// masked alike before it is added to din, as model/linear.cc does.
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/step_products.h"
#include "xtuner/model/config.h"
#include "xtuner/model/param_source.h"
#include "xtuner/model/params.h"
#include "xtuner/ops/dropout_mask.h"

namespace xt::cuda {

class LoraTerms {
 public:
  // The references outlive the object; work is queued on `stream`.
  // noise: the batch's noise keys (T) on the device when this pass drops (a training pass of a
  // batch with keys, spec.dropout > 0), else null.
  LoraTerms(const LoraSpec& spec, StepProducts& mm, const uint64_t* noise, void* stream)
      : rank_(spec.rank),
        scale_(float(!spec.enabled() ? 0.0
                     : noise         ? spec.dropout_scale()
                                     : spec.scale())),
        noise_(noise),
        threshold_(noise ? ops::dropout_threshold(spec.dropout) : 0),
        mm_(mm),
        stream_(stream) {}
  LoraTerms(const LoraTerms&) = delete;
  LoraTerms& operator=(const LoraTerms&) = delete;

  // out (T, O) += the terms of the adapters of the weight at layout offset `w` in the layer whose
  // offsets are `o`, of its input in (T, I), or in16 (in's bf16 copy, bf16 mode; in may then be
  // null). P: the layer's unit, acquired.
  Status Forward(float* out, const float* in, const uint16_t* in16, const UnitParams& P,
                 const LayerOffsets& o, int64_t w, int64_t T, int64_t I, int64_t O);
  // din (T, I) += the adapters' terms of dout (T, O), or of dout16 (its bf16 copy; dout then
  // null); their A and B gradients into G (written where blank, added otherwise: GradWrites
  // through StepProducts). in / in16 as the forward's. (From dout16, a dense MLP's gate_up in
  // bf16 mode, dy is s times the rounded gradient, rounded again for its products: where s is
  // not a power of two that can differ by a bf16 rounding from the CPU's, which rounds s dout.)
  Status Backward(float* din, const float* dout, const uint16_t* dout16, const float* in,
                  const uint16_t* in16, const UnitParams& P, const UnitGrads& G,
                  const LayerOffsets& o, int64_t w, int64_t T, int64_t I, int64_t O);

 private:
  // An adapter's input as its products read it: in / in16, or their masked copy.
  struct Input {
    const float* in = nullptr;
    const uint16_t* in16 = nullptr;
    DeviceArray<float> masked;
    DeviceArray<uint16_t> masked16;
  };
  Status Mask(const LoraPiece& piece, const float* in, const uint16_t* in16, int64_t T, int64_t I,
              Input* x);
  // The adapter's first product, forward and backward alike: its shape checked, its input as
  // Mask gives it (*x), and *z (T, r) = x A^T allocated and made.
  Status Down(const LoraPiece& piece, const float* in, const uint16_t* in16, const UnitParams& P,
              int64_t T, int64_t I, int64_t O, Input* x, DeviceArray<float>* z);

  const int64_t rank_;
  const float scale_;
  const uint64_t* const noise_;
  const uint32_t threshold_;
  StepProducts& mm_;
  void* const stream_;
};

}  // namespace xt::cuda
