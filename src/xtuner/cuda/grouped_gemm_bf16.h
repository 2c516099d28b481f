// The experts' bf16 products on xtuner's own tensor-core kernel: all experts in one launch,
// bf16 operands, fp32 accumulation and output, mma.sync with known layouts (mma_sm80.h). It is
// the path Blas takes for bf16 where cuBLAS's grouped GEMM refuses bf16 inputs with fp32
// outputs (one cuBLAS call per expert otherwise: 128 small GEMMs a product, each leaving most
// of the GPU idle at a few hundred rows).
//
// Row-major throughout; expert e owns rows [offsets[e], offsets[e + 1]) of the row-indexed
// operands; offsets (E + 1) on the HOST, non-decreasing from 0.
//   kForward  c (R, N) = a_e (rows, K) b_e^T,  b (E, N, K)     (y = x w^T)
//   kData     c (R, N) = a_e (rows, K) b_e,    b (E, K, N)     (dx = dy w)
//   kWeight   c (E, M, N) += a_e^T b_e,  a (R, M), b (R, N)   (dw += dy^T x; K = rows)
// kForward and kData assign their rows (experts without rows are left alone: they own none);
// kWeight adds (an expert without rows adds nothing), or with add = false assigns (an expert
// without rows gets zeros), which spares reading c. Each output element is one
// thread's sum in a fixed k order: bit-identical from run to run. Against a double-precision
// product of the same bf16 operands: fp32 summation error, about 1e-7 sqrt(K) relative.
//
// The scheme: CUDA blocks of 8 warps own 128 x 128 tiles of one expert's output (a tile list
// made on the host from the offsets, the longest first), warps 64 x 32 of it; K in steps of 32
// through a 3-stage cp.async pipeline in shared memory (60 KiB), operands by ldmatrix.
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"

namespace xt::cuda {

enum class GroupedOp { kForward, kData, kWeight };

// Whether the kernel takes these dims: every dim > 0 (for kWeight, M and N; for the others N
// and K; the per-expert one comes from the offsets) and the operands' contiguous dims
// multiples of 8 (16-byte rows): K for kForward, K and N for kData, M and N for kWeight.
bool GroupedGemmBf16Supports(GroupedOp op, int64_t M, int64_t N, int64_t K);

// The product `op` (above) on the device: a and b __nv_bfloat16, 16-byte aligned; c floats.
// M is ignored by kForward and kData, K by kWeight; so is `add` by kForward and kData (they
// assign). Errors (unsupported dims, misaligned operands, bad offsets) come before any launch.
// Queued on `stream`.
Status GroupedGemmBf16(GroupedOp op, float* c, const void* a, const void* b, const int32_t* offsets,
                       int64_t E, int64_t M, int64_t N, int64_t K, void* stream, bool add = true);

}  // namespace xt::cuda
