#include "xtuner/cuda/lora_terms.h"

#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {

Status LoraTerms::Mask(const LoraPiece& piece, const float* in, const uint16_t* in16, int64_t T,
                       int64_t I, Input* x) {
  if (!noise_) {
    x->in = in, x->in16 = in16;
    return Status::OK();
  }
  const uint64_t salt = uint64_t(piece.id);
  if (in16) {  // bf16 mode: the products read the bf16 copy alone
    XT_RETURN_IF_ERROR(x->masked16.Alloc(T * I, stream_));
    XT_RETURN_IF_ERROR(
        DropoutMask(x->masked16.get(), in16, T, I, noise_, salt, threshold_, stream_));
    x->in16 = x->masked16.get();
    return Status::OK();
  }
  XT_RETURN_IF_ERROR(x->masked.Alloc(T * I, stream_));
  XT_RETURN_IF_ERROR(
      DropoutMask(x->masked.get(), in, T, I, noise_, salt, threshold_, /*add=*/false, stream_));
  x->in = x->masked.get();
  return Status::OK();
}

Status LoraTerms::Down(const LoraPiece& piece, const float* in, const uint16_t* in16,
                       const UnitParams& P, int64_t T, int64_t I, int64_t O, Input* x,
                       DeviceArray<float>* z) {
  XT_CHECK(piece.in == I && piece.row0 + piece.rows <= O, "LoraTerms: an adapter's shape");
  XT_RETURN_IF_ERROR(Mask(piece, in, in16, T, I, x));
  XT_RETURN_IF_ERROR(z->Alloc(T * rank_, stream_));
  return mm_.Linear(z->get(), x->in, P(piece.a), T, I, rank_, false, x->in16);
}

Status LoraTerms::Forward(float* out, const float* in, const uint16_t* in16, const UnitParams& P,
                          const LayerOffsets& o, int64_t w, int64_t T, int64_t I, int64_t O) {
  for (const LoraPiece& piece : o.lora) {
    if (piece.base != w) continue;
    Input x;
    DeviceArray<float> z, y;
    XT_RETURN_IF_ERROR(Down(piece, in, in16, P, T, I, O, &x, &z));
    XT_RETURN_IF_ERROR(y.Alloc(T * piece.rows, stream_));
    // y (T, rows) = z B^T; out[:, row0 : row0 + rows] += s y
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
    Input x;
    DeviceArray<float> z, dy, dz;
    XT_RETURN_IF_ERROR(Down(piece, in, in16, P, T, I, O, &x, &z));
    XT_RETURN_IF_ERROR(dy.Alloc(T * piece.rows, stream_));
    XT_RETURN_IF_ERROR(dz.Alloc(T * rank_, stream_));
    // dy = s dout[:, row0 : row0 + rows]
    XT_RETURN_IF_ERROR(
        dout ? ScaleColumns(dy.get(), piece.rows, 0, dout, O, piece.row0, T, piece.rows, scale_,
                            /*add=*/false, stream_)
             : ScaleColumns(dy.get(), piece.rows, 0, dout16, O, piece.row0, T, piece.rows, scale_,
                            /*add=*/false, stream_));
    // dz (T, r) = dy B; dB (rows, r) (+)= dy^T z
    XT_RETURN_IF_ERROR(mm_.LinearBackward(dz.get(), G(piece.b), dy.get(), z.get(), P(piece.b), T,
                                          rank_, piece.rows, /*accumulate=*/false));
    // din += dz A (masked as x); dA (r, I) (+)= dz^T x
    if (!noise_ || !din) {
      XT_RETURN_IF_ERROR(mm_.LinearBackward(din, G(piece.a), dz.get(), x.in, P(piece.a), T, I,
                                            rank_, /*accumulate=*/true, false, x.in16));
      continue;
    }
    DeviceArray<float> dx;
    XT_RETURN_IF_ERROR(dx.Alloc(T * I, stream_));
    XT_RETURN_IF_ERROR(mm_.LinearBackward(dx.get(), G(piece.a), dz.get(), x.in, P(piece.a), T, I,
                                          rank_, /*accumulate=*/false, false, x.in16));
    XT_RETURN_IF_ERROR(
        DropoutMask(din, dx.get(), T, I, noise_, uint64_t(piece.id), threshold_, true, stream_));
  }
  return Status::OK();
}

}  // namespace xt::cuda
