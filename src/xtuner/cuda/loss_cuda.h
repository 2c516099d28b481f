// CUDA twins of the language-model head's cross-entropy (loss/cross_entropy.h) and of a few
// small ops the training step needs around it (ops::moe_balance_stats, y += x, broadcasts,
// double -> float). Device pointers, queued on `stream` (a cudaStream_t; null: the default
// stream). Sizes are checked (negative: error) before any CUDA call; zero sizes launch nothing.
// No atomics: every result is a function of the inputs alone. Unverified on a GPU so far: see
// tests/cuda/cross_entropy_cuda_test.cc and tests/cuda/small_ops_cuda_test.cc.
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"
#include "xtuner/cuda/gemm_cuda.h"

namespace xt::cuda {

// ---------------------------------------------------------------- chunked lm_head + CE
// chunked_cross_entropy (loss/cross_entropy.h) on the GPU: h (T, H), w (V, H), dh (T, H) and
// dw (V, H) on the device; targets (T) on the HOST, each kIgnoreIndex (-100: no loss) or in
// [0, V) (anything else: an error naming the position, before any CUDA call).
// Returns the sum over loss tokens of -log softmax(h[t] @ w^T)[targets[t]] (unweighted, double).
// dh null: forward only (dw untouched). Otherwise dh is assigned (rows without a target get 0)
// and dw += the gradient of weight * that sum, unless dw is null (a frozen lm_head: dh only).
// Rows without a target cost nothing. Per chunk of loss rows (chunk_rows <= 0:
// DefaultLossChunkRows(V, true), about 256 Mi logits): the rows of h gathered into scratch,
// logits = h_c @ w^T (blas.Gemm, full fp32), one block per row for max, sum of exp (fp32 expf,
// summed in double), the row's loss (double) and dlogits = weight * (softmax - onehot) in place,
// then dh_c = dlogits @ w scattered into dh and dw += dlogits^T @ h_c. The row losses are summed
// on the device in double by one block in a fixed order.
//
// `stream` must be the stream `blas` was created with (Blas does not expose it): every kernel,
// copy and scratch allocation (cudaMallocAsync / cudaFreeAsync) is queued there, in order with
// the GEMMs. The host waits once, at the end, for the loss (one 8-byte copy and a
// cudaStreamSynchronize), also when no row carries a loss (the sum is then 0). Bad arguments
// are errors before anything is queued. The targets array may be reused on return.
//
// Against the CPU twin: other summation orders (cuBLAS vs ops::gemm, expf vs the CPU's
// polynomial Exp): about 1e-7 relative on the loss, 1e-6 norm-wise on dw and on dh for small V;
// dh sums V cancelling fp32 terms, so its rounding grows like eps * sqrt(V) (up to ~1e-5 at
// V = 151936). Scratch: about (2 * chunk + 1) * H + chunk * V floats and 12 bytes a loss row.
//
// in = GemmInput::kBf16: the three products take bf16 operands (fp32 sums, as the CPU's bf16
// matmul mode): w's bf16 copy `w_bf16` ((V, H) uint16 on the device; null: rounded into scratch
// on every call), and the gathered rows and the logits' gradient rounded into scratch. Those of
// up to 4 chunks are kept, and dw takes one product per such group (G = 4 C rows: G * (H + V)
// more bf16 elements of scratch) instead of one per chunk, each of which reads and writes the
// whole fp32 dw. The softmax, the losses and dh, dw stay fp32.
//
// dw_beta 0 assigns dw instead of adding into it (the first chunk's product assigns; zeros when
// no row carries a loss): dw's contents are not read. Only 0 and 1 are taken.
Result<double> ChunkedCrossEntropy(Blas& blas, float* dh, float* dw, const float* h, const float* w,
                                   const int32_t* targets_host, int64_t T, int64_t H, int64_t V,
                                   double weight, int64_t chunk_rows = 0, void* stream = nullptr,
                                   GemmInput in = GemmInput::kF32, const void* w_bf16 = nullptr,
                                   float dw_beta = 1.0f);
// The same with nothing waited for: the sum is written to `total`, one double on the device,
// in stream order (0 when no row carries a loss), for the caller to read after its own wait
// (the model's step reads it at its end, so the loss costs no host sync of its own).
Status ChunkedCrossEntropyQueued(double* total, Blas& blas, float* dh, float* dw, const float* h,
                                 const float* w, const int32_t* targets_host, int64_t T, int64_t H,
                                 int64_t V, double weight, int64_t chunk_rows = 0,
                                 void* stream = nullptr, GemmInput in = GemmInput::kF32,
                                 const void* w_bf16 = nullptr, float dw_beta = 1.0f);

// ---------------------------------------------------------------- small ops
// ops::moe_balance_stats: count (E) and prob_sum (E) += over tokens, from probs (T, E) and
// topk_idx (T, k); all on the device. prob_sum: one thread per expert adds the tokens in token
// order, in double: bit-identical to the CPU (a serial walk of T adds per expert: ~T * 10 ns).
// count: one block per expert counts its assignments (an integer, in any order) and adds it once:
// bit-identical to the CPU's repeated
// += 1.0 while the counts stay integers below 2^53 (as they do). Indices outside [0, E) count
// for no expert (as on the CPU).
Status MoeBalanceStats(double* count, double* prob_sum, const float* probs, const int32_t* topk_idx,
                       int64_t T, int64_t E, int64_t k, void* stream = nullptr);

// *out (one double on the device) = the sum of x (n)^2, each square and the sums in double:
// the gradient norm's square. A fixed grid (at most 1024 blocks) and fixed trees: the same bits
// for the same x on every run; it agrees with the CPU's sum_of_squares (optim/clip.h) to about
// 1e-15 relative, not bit for bit (other order). Scratch: cudaMallocAsync on `stream`.
Status SumOfSquares(double* out, const float* x, int64_t n, void* stream = nullptr);

// y (n) += x (n), elementwise in fp32.
Status AddInPlace(float* y, const float* x, int64_t n, void* stream = nullptr);
// y[at[i]] += delta[i] for i < n (the at distinct: one thread each).
Status AddAt(float* y, const int64_t* at, const float* delta, int64_t n, void* stream = nullptr);

// out (T, E) = row (E) repeated T times.
Status BroadcastRow(float* out, const float* row, int64_t T, int64_t E, void* stream = nullptr);

// out[i] = float(in[i] * scale), the product in double, for i < n.
Status DoubleToFloatScaled(float* out, const double* in, int64_t n, double scale,
                           void* stream = nullptr);

}  // namespace xt::cuda
