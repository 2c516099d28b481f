// ops::gemm on oneDNN's sgemm (row-major). oneDNN picks the best kernel for the CPU it finds
// (AVX2, AVX-512, AMX) and runs on the same OpenMP pool as our own kernels.
#include <dnnl.h>

#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {

void gemm(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool ta,
          bool tb, float beta) {
  if (GetMatmulPrecision() == MatmulPrecision::kBf16)
    return gemm_bf16(c, a, b, M, N, K, ta, tb, beta);
  gemm_f32(c, a, b, M, N, K, ta, tb, beta);
}

void gemm_f32(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool ta,
              bool tb, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: c = beta * c
    for (int64_t i = 0; i < M * N; ++i) c[i] = beta == 0.0f ? 0.0f : beta * c[i];
    return;
  }
  dnnl_dim_t lda = ta ? M : K;
  dnnl_dim_t ldb = tb ? K : N;
  dnnl_status_t st =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, a, lda, b, ldb, beta, c, N);
  XT_CHECK(st == dnnl_success, "dnnl_sgemm failed with status " + std::to_string(int(st)));
}

void linear_forward(float* out, const float* in, const float* w, int64_t T, int64_t I, int64_t O) {
  gemm(out, in, w, T, O, I, /*ta=*/false, /*tb=*/true, 0.0f);  // (T, I) @ (O, I)^T
}

void linear_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                     int64_t T, int64_t I, int64_t O, bool accumulate_din) {
  if (din) gemm(din, dout, w, T, I, O, false, false, accumulate_din ? 1.0f : 0.0f);  // (T,O)@(O,I)
  if (dw) gemm(dw, dout, in, O, I, T, /*ta=*/true, false, 1.0f);  // (T,O)^T @ (T,I)
}

}  // namespace xt::ops
