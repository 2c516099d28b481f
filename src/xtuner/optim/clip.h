// Global gradient norm and clipping, as torch.nn.utils.clip_grad_norm_ (L2, error_if_nonfinite
// off), with a norm that is reproducible: it is accumulated in double over fixed chunks of
// kNormChunk elements (each summed in a fixed order), and the chunk sums are added in index
// order, so the result has the same bits for any OpenMP thread count. (A different split of the
// slab, e.g. across data-parallel shards, adds in a different order: the value then differs in
// the last bits, but is again fixed for a fixed configuration.)
#pragma once

#include <cstdint>

namespace xt {

constexpr int64_t kNormChunk = 1 << 16;

// sum_i x[i]^2 over x (n), in double, in the fixed order above. NaN/Inf propagate.
double sum_of_squares(const float* x, int64_t n);

// sqrt(sum_of_squares(grads, n)): the global L2 norm of the gradient slab (or of a shard's
// part, to be combined as sqrt(sum of the shards' sum_of_squares)).
double grad_norm(const float* grads, int64_t n);

// Whether a norm (or loss) is usable: not NaN and not +-Inf. A non-finite gradient norm means
// the step must be skipped (see non_finite_guard.h).
bool norm_is_finite(double total_norm);

// torch's factor: min(1, max_norm / (total_norm + 1e-6)). total_norm finite and >= 0,
// max_norm > 0.
double clip_coef(double total_norm, double max_norm);

// grads (n) *= coef, elementwise (OpenMP).
void scale_grads(float* grads, int64_t n, float coef);

// Computes the global norm of grads (n) and, when it is finite and max_norm > 0, scales grads
// by clip_coef (rounded to float, as torch's float32 coefficient; nothing is written when the
// coefficient is 1). Returns the norm before clipping, as torch does. A non-finite norm leaves
// grads untouched (torch would multiply them by 0 or NaN); max_norm <= 0 only measures (HF
// Trainer's max_grad_norm = 0 means no clipping).
double clip_grad_norm(float* grads, int64_t n, double max_norm);

}  // namespace xt
