// Dropless MoE dispatch: the plan (a stable counting sort of the assignments by expert), the
// permutation of token rows into expert order and back, the grouped GEMM over the experts' row
// ranges, and the weighted un-permute. Every output element is written by one thread in a fixed
// order: no atomics, nothing depends on the thread count except what ops::gemm itself does.
#include <climits>
#include <cstring>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {

void moe_plan(int32_t* offsets, int32_t* sorted, int32_t* slot_of, const int32_t* topk_idx,
              int64_t T, int64_t E, int64_t k) {
  const int64_t A = T * k;
  XT_CHECK(A <= INT32_MAX, "moe_plan: T * k does not fit in int32");
  std::vector<int32_t> cursor(E, 0);  // (E) counts, then the next free row of each expert
  for (int64_t a = 0; a < A; ++a) {
    int32_t e = topk_idx[a];
    XT_CHECK(e >= 0 && e < E, "moe_plan: expert id " + std::to_string(e) + " out of range");
    ++cursor[e];
  }
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    offsets[e + 1] = offsets[e] + cursor[e];
    cursor[e] = offsets[e];
  }
  for (int64_t a = 0; a < A; ++a) {  // in order of a: stable within each expert
    int32_t p = cursor[topk_idx[a]]++;
    sorted[p] = int32_t(a);
    slot_of[a] = p;
  }
}

void moe_permute(float* xs, const float* x, const int32_t* sorted, int64_t A, int64_t k,
                 int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < A; ++p) {
    std::memcpy(xs + p * H, x + int64_t(sorted[p] / k) * H, size_t(H) * sizeof(float));
  }
}

void moe_permute_backward(float* dx, const float* dxs, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* d = dx + t * H;  // (H)
    for (int64_t j = 0; j < k; ++j) {
      const float* s = dxs + int64_t(slot_of[t * k + j]) * H;  // (H)
      for (int64_t h = 0; h < H; ++h) d[h] += s[h];
    }
  }
}

// The experts' GEMMs run in parallel, one thread each (dynamic schedule): small
// products split over the whole pool waste it in synchronisation. Outputs are disjoint (rows of
// out and din, slabs of dw), and each product runs on one thread whatever the pool's size.
void grouped_linear_forward(float* out, const float* in, const float* w, const int32_t* offsets,
                            int64_t E, int64_t I, int64_t O) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    // out_e (n, O) = in_e (n, I) @ w_e (O, I)^T
    gemm(out + r0 * O, in + r0 * I, w + e * O * I, n, O, I, /*ta=*/false, /*tb=*/true, 0.0f);
  }
}

void grouped_linear_backward(float* din, float* dw, const float* dout, const float* in,
                             const float* w, const int32_t* offsets, int64_t E, int64_t I,
                             int64_t O) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    // din_e (n, I) = dout_e (n, O) @ w_e (O, I)
    gemm(din + r0 * I, dout + r0 * O, w + e * O * I, n, I, O, false, false, 0.0f);
  }
  if (!dw) return;  // frozen weights
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    // dw_e (O, I) += dout_e (n, O)^T @ in_e (n, I)
    gemm(dw + e * O * I, dout + r0 * O, in + r0 * I, O, I, n, /*ta=*/true, false, 1.0f);
  }
}

void moe_combine_forward(float* y, const float* ys, const float* topk_w, const int32_t* slot_of,
                         int64_t T, int64_t k, int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* out = y + t * H;  // (H)
    for (int64_t h = 0; h < H; ++h) out[h] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      const float wj = topk_w[t * k + j];
      const float* s = ys + int64_t(slot_of[t * k + j]) * H;  // (H)
      for (int64_t h = 0; h < H; ++h) out[h] += wj * s[h];
    }
  }
}

// slot_of is a permutation of [0, A), so each dys row is written by exactly one (t, j).
void moe_combine_backward(float* dys, float* dtopk_w, const float* dy, const float* ys,
                          const float* topk_w, const int32_t* slot_of, int64_t T, int64_t k,
                          int64_t H) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dy + t * H;  // (H)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = slot_of[t * k + j];
      const float wj = topk_w[t * k + j];
      const float* s = ys + p * H;  // (H)
      float* ds = dys + p * H;      // (H)
      double dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        ds[h] = wj * g[h];
        dot += double(g[h]) * s[h];
      }
      dtopk_w[t * k + j] = float(dot);
    }
  }
}

}  // namespace xt::ops
