// Packed causal GQA attention on the GPU's tensor cores: bf16 products, fp32 accumulation. A
// drop-in twin of cuda::AttentionForward / AttentionBackward (ops_cuda.h): same shapes, same
// semantics (ops::attention_forward / attention_backward), same host cu_seqlens, same argument
// checks (made before any CUDA call), T == 0 launches nothing, no atomics (bit-identical results
// from run to run on a given binary and GPU model), scratch from the stream-ordered allocator.
//
// Precision: q, k, v, dout are fp32 in memory (the FromBf16 functions take q, k, v, out in bf16);
// each call rounds them once to bf16 (round to nearest even) into scratch copies (2 bytes an
// element: the forward's q, k, v, the backward's dout, q, k, v), which the kernels stream into
// shared memory for the tensor-core products;
// the softmax weights p and the score gradients ds are rounded there too; the products
// accumulate in fp32. Softmax statistics (running max
// and sum), lse and delta = <dout, out> are fp32 (dout rounded to bf16 there too, as the
// products see it). Against the fp32 twin expect norm-wise relative
// differences of order 1e-2 for out and a few 1e-2 for the gradients (bf16's unit roundoff is
// 2^-8), not the fp32 kernels' 1e-6.
//
// Head dims: D % 16 == 0 and 16 <= D <= 128 (AttentionBf16Supports); others are an error (use
// the fp32 kernels there).
#pragma once

#include <cstdint>
#include <string>

#include "xtuner/core/status.h"

namespace xt::cuda {

// The two kernel families behind these functions, same contract, different code:
//   kWmma  WMMA fragments; each warp's scores go through shared memory for the softmax
//          (attention_bf16_tiles.h);
//   kMma   mma.sync with known register layouts; scores, softmax weights and accumulators stay
//          in registers, the streamed tiles are double-buffered with cp.async
//          (attention_mma_tiles.h).
// They round alike and differ in fp32 summation order only. "wmma" and "mma" by name.
enum class AttentionBf16Kernels { kWmma, kMma };
const char* AttentionBf16KernelsName(AttentionBf16Kernels kernels);
// false (*kernels untouched) for a name that is neither.
bool ParseAttentionBf16Kernels(const std::string& name, AttentionBf16Kernels* kernels);

// Whether the bf16 kernels take head dim D: a multiple of 16 in [16, 128] (64 and 128 included).
bool AttentionBf16Supports(int64_t D);

// OK when the current device has bf16 tensor cores (compute capability 8.0 or newer), else an
// error naming the device and its capability. The kernels check it before any launch (builds
// for older architectures compile them to a trap).
Status AttentionBf16Device();

// out (T, Hq, D), lse (T, Hq) assigned from q (T, Hq, D), k, v (T, Hkv, D); cu_seqlens a HOST
// array (num_docs + 1) from 0 to T, non-decreasing; causal within each document.
Status AttentionForwardBf16(float* out, float* lse, const float* q, const float* k, const float* v,
                            const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                            int64_t Hkv, int64_t D, float scale, void* stream = nullptr,
                            AttentionBf16Kernels kernels = AttentionBf16Kernels::kWmma);

// dq (T, Hq, D), dk, dv (T, Hkv, D) assigned from dout, out (T, Hq, D), lse (T, Hq) and the
// forward's inputs.
Status AttentionBackwardBf16(float* dq, float* dk, float* dv, const float* dout, const float* out,
                             const float* lse, const float* q, const float* k, const float* v,
                             const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t D, float scale, void* stream = nullptr,
                             AttentionBf16Kernels kernels = AttentionBf16Kernels::kWmma);

// The same with q, k, v (and in the backward the forward's out) already in bf16: uint16_t bits
// of __nv_bfloat16, e.g. the model's copies rounded where they were made. No copies of them are
// made (dout is still rounded into one; inputs that are not 16-byte aligned are copied to aligned
// scratch). Each gives the bits the function above gives on the
// widened values: the forward's results are those of any fp32 q, k, v that round to these; the
// backward reads out as rounded, which moves delta = <dout, out> by out's rounding.
Status AttentionForwardFromBf16(float* out, float* lse, const uint16_t* q16, const uint16_t* k16,
                                const uint16_t* v16, const int32_t* cu_seqlens, int64_t num_docs,
                                int64_t T, int64_t Hq, int64_t Hkv, int64_t D, float scale,
                                void* stream = nullptr,
                                AttentionBf16Kernels kernels = AttentionBf16Kernels::kWmma);
Status AttentionBackwardFromBf16(float* dq, float* dk, float* dv, const float* dout,
                                 const uint16_t* out16, const float* lse, const uint16_t* q16,
                                 const uint16_t* k16, const uint16_t* v16,
                                 const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                                 int64_t Hkv, int64_t D, float scale, void* stream = nullptr,
                                 AttentionBf16Kernels kernels = AttentionBf16Kernels::kWmma);

}  // namespace xt::cuda
