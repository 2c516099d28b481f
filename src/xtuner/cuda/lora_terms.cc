#include "xtuner/cuda/lora_terms.h"

#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {

Status LoraTerms::Forward(float* out, const float* in, const uint16_t* in16, const UnitParams& P,
                          const LayerOffsets& o, int64_t w, int64_t T, int64_t I, int64_t O) {
  for (const LoraPiece& piece : o.lora) {
    if (piece.base != w) continue;
    XT_CHECK(piece.in == I && piece.row0 + piece.rows <= O, "LoraTerms: an adapter's shape");
    DeviceArray<float> z, y;
    XT_RETURN_IF_ERROR(z.Alloc(T * rank_, stream_));
    XT_RETURN_IF_ERROR(y.Alloc(T * piece.rows, stream_));
    // z (T, r) = in A^T; y (T, rows) = z B^T; out[:, row0 : row0 + rows] += s y
    XT_RETURN_IF_ERROR(mm_.Linear(z.get(), in, P(piece.a), T, I, rank_, false, in16));
    XT_RETURN_IF_ERROR(mm_.Linear(y.get(), z.get(), P(piece.b), T, rank_, piece.rows));
    XT_RETURN_IF_ERROR(ScaleColumns(out, O, piece.row0, y.get(), piece.rows, 0, T, piece.rows,
                                    scale_, /*add=*/true, stream_));
  }
  return Status::OK();
}

Status LoraTerms::Backward(float* din, const float* dout, const uint16_t* dout16, const float* in,
                           const uint16_t* in16, const UnitParams& P, const UnitGrads& G,
                           const LayerOffsets& o, int64_t w, int64_t T, int64_t I, int64_t O) {
  for (const LoraPiece& piece : o.lora) {
    if (piece.base != w) continue;
    XT_CHECK(piece.in == I && piece.row0 + piece.rows <= O, "LoraTerms: an adapter's shape");
    DeviceArray<float> z, dy, dz;
    XT_RETURN_IF_ERROR(z.Alloc(T * rank_, stream_));
    XT_RETURN_IF_ERROR(dy.Alloc(T * piece.rows, stream_));
    XT_RETURN_IF_ERROR(dz.Alloc(T * rank_, stream_));
    XT_RETURN_IF_ERROR(mm_.Linear(z.get(), in, P(piece.a), T, I, rank_, false, in16));
    // dy = s dout[:, row0 : row0 + rows]
    XT_RETURN_IF_ERROR(
        dout ? ScaleColumns(dy.get(), piece.rows, 0, dout, O, piece.row0, T, piece.rows, scale_,
                            /*add=*/false, stream_)
             : ScaleColumns(dy.get(), piece.rows, 0, dout16, O, piece.row0, T, piece.rows, scale_,
                            /*add=*/false, stream_));
    // dz (T, r) = dy B; dB (rows, r) (+)= dy^T z
    XT_RETURN_IF_ERROR(mm_.LinearBackward(dz.get(), G(piece.b), dy.get(), z.get(), P(piece.b), T,
                                          rank_, piece.rows, /*accumulate=*/false));
    // din += dz A; dA (r, I) (+)= dz^T in
    XT_RETURN_IF_ERROR(mm_.LinearBackward(din, G(piece.a), dz.get(), in, P(piece.a), T, I, rank_,
                                          /*accumulate=*/true, false, in16));
  }
  return Status::OK();
}

}  // namespace xt::cuda
