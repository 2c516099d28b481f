// The language-model head fused with cross-entropy, computed in chunks of rows so that training
// never holds the full (T, V) logits: at most chunk_rows x V floats live at once.
#pragma once

#include <cstdint>

namespace xt {

constexpr int32_t kIgnoreIndex = -100;

// h (T, H) final hidden states, w (V, H) the lm_head, targets (T) with kIgnoreIndex for tokens
// that carry no loss (targets must otherwise be in [0, V); checked by the caller).
// Returns the sum over loss tokens of -log softmax(h[t] @ w^T)[targets[t]], in double (unweighted).
// When dh is not null: the gradient of weight * that sum: dh (T, H) assigned (rows without a
// target get 0) and dw (V, H) += (unless dw is null: a frozen lm_head).
// Rows without a target cost nothing. chunk_rows <= 0 picks DefaultLossChunkRows(V, false).
// Loss rows a chunk when none is asked for: about 32 Mi logits (128 MiB of fp32) on the CPU,
// where a chunk's logits should stay near the caches; about 256 Mi (1 GiB) on the GPU (gpu),
// where every chunk reads and writes the whole fp32 dw (V, H) once (2.5 GB at V = 151936,
// H = 2048: with 220-row chunks a 4k-token step would move 47 GB of it, ~10 ms of an H200's
// memory bandwidth) and dh's product (chunk, H) needs rows to fill the GPU. At least 1.
int64_t DefaultLossChunkRows(int64_t V, bool gpu);
// The GPU's bf16 loss keeps the rounded rows and logits' gradients of up to this many chunks and
// takes one product into dw per such group (cuda/cross_entropy.cu): fewer passes over the fp32
// dw (V, H) for (group - 1) chunks of bf16 scratch more.
constexpr int64_t kGpuLossGroupChunks = 4;

double chunked_cross_entropy(float* dh, float* dw, const float* h, const float* w,
                             const int32_t* targets, int64_t T, int64_t H, int64_t V, double weight,
                             int64_t chunk_rows = 0);

// logits (T, V) = h (T, H) @ w (V, H)^T: for inspection (debug-dump), not for training.
void lm_head_logits(float* logits, const float* h, const float* w, int64_t T, int64_t H, int64_t V);

}  // namespace xt
