// GEMMs on the GPU through cuBLASLt (dense) and cuBLAS's grouped batched GEMM or xtuner's own
// grouped kernel (the experts):
// the CUDA twins of ops::gemm / ops::gemm_bf16 and of the grouped expert products. Row-major,
// like the CPU ops; outputs and accumulation in fp32. Inputs in fp32 (full fp32 products, no
// TF32: the twin of ops::gemm) or bf16 (the twin of ops::gemm_bf16: bf16 inputs, fp32 sums).
// Unverified on a GPU so far (none lent): see tests/cuda/gemm_cuda_test.cc.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/cuda/grouped_gemm_bf16.h"

namespace xt::cuda {

enum class GemmInput { kF32, kBf16 };

// One cuBLAS + cuBLASLt context bound to one stream, with its workspace. Not thread-safe.
class Blas {
 public:
  // stream: a cudaStream_t (null: the default stream).
  static Result<std::unique_ptr<Blas>> Create(void* stream = nullptr);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // c (M, N) = op(a) @ op(b) + beta * c, as ops::gemm: a is (M, K), or (K, M) when ta; b is
  // (K, N), or (N, K) when tb; beta 0 assigns, 1 accumulates. a and b hold `in` elements (float
  // or __nv_bfloat16), c floats. Queued on the stream; errors name the shape.
  Status Gemm(float* c, const void* a, const void* b, int64_t M, int64_t N, int64_t K, bool ta,
              bool tb, float beta, GemmInput in);

  // How the experts' products of one input type run:
  //   kCublasGrouped  one cublasGemmGroupedBatchedEx call a product (the default, tried first);
  //   kXtunerGrouped  bf16 only: xtuner's own kernel, all experts in one launch
  //                   (grouped_gemm_bf16.h), where the dims allow it (multiples of 8);
  //   kPerExpert      one cuBLAS call per expert.
  // The first grouped product of a type that is on kCublasGrouped first probes cuBLAS with a
  // tiny product; if cuBLAS refuses to group the type (it documents the combinations it groups;
  // bf16 inputs with fp32 outputs may not be one), the path moves to kXtunerGrouped (bf16) or
  // kPerExpert (fp32) for good, said once on stderr, before any real product: every step takes
  // the same path. Products the path cannot take go one per expert.
  enum class ExpertsPath { kCublasGrouped, kXtunerGrouped, kPerExpert };
  ExpertsPath experts_path(GemmInput in) const { return path_[Index(in)]; }
  // "cublas-grouped", "xtuner-grouped" or "per-expert".
  static const char* ExpertsPathName(ExpertsPath path);
  // The path of that name; false (*path untouched) for any other name.
  static bool ParseExpertsPath(const std::string& name, ExpertsPath* path);
  // Sets the path (for tests and benchmarks of each; kXtunerGrouped is for bf16 only);
  // kCublasGrouped probes cuBLAS again at the next product.
  void SetExpertsPath(GemmInput in, ExpertsPath path) {
    path_[Index(in)] = path;
    probed_[Index(in)] = false;
  }

  // The experts' product, as ops::grouped_linear_forward: rows [offsets[e], offsets[e+1]) of x
  // (R, I) go through expert e's w (E, O, I): y (R, O) = x_e @ w_e^T. `offsets` (E + 1) on the
  // HOST (the MoE token counts are the one host sync a step needs). Experts without rows are
  // skipped; R = 0 is fine.
  Status GroupedForward(float* y, const void* x, const void* w, const int32_t* offsets, int64_t E,
                        int64_t I, int64_t O, GemmInput in);
  // Its backward, as ops::grouped_linear_backward: dx (R, I) = dy_e @ w_e (assigned; skipped
  // when dx is null), dw (E, O, I) += dy_e^T @ x_e (skipped when dw is null: frozen experts; x
  // is then not read). dy, x, w hold `in` elements. dw_beta 0
  // assigns dw instead (zeros for experts without rows; dw's contents are not read); only 0 and
  // 1 are taken.
  Status GroupedBackward(float* dx, float* dw, const void* dy, const void* x, const void* w,
                         const int32_t* offsets, int64_t E, int64_t I, int64_t O, GemmInput in,
                         float dw_beta = 1.0f);

 private:
  Blas() = default;
  // One group of products C_e = op(A_e) op(B_e) + beta C_e in cuBLAS's column-major terms.
  struct Problem {
    const void* a;
    const void* b;
    float* c;
    int m, n, k, lda, ldb, ldc;
  };
  Status Grouped(const Problem* problems, int64_t count, bool ta, bool tb, float beta,
                 GemmInput in);
  // Whether the product `op` (grouped_gemm_bf16.h) of these dims and operands goes to xtuner's
  // grouped kernel: the path is kXtunerGrouped and the kernel takes them.
  bool XtunerGrouped(GroupedOp op, int64_t M, int64_t N, int64_t K, const void* a, const void* b,
                     GemmInput in) const;

  void* stream_ = nullptr;
  void* blas_ = nullptr;  // cublasHandle_t
  void* lt_ = nullptr;    // cublasLtHandle_t
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  void* pointers_ = nullptr;  // device array of 3 * pointer_capacity_ pointers
  int64_t pointer_capacity_ = 0;
  static int Index(GemmInput in) { return in == GemmInput::kBf16 ? 1 : 0; }
  // Per GemmInput (Index): how the experts' products run, and whether cuBLAS was probed.
  ExpertsPath path_[2] = {ExpertsPath::kCublasGrouped, ExpertsPath::kCublasGrouped};
  bool probed_[2] = {false, false};
  // Probes cuBLAS once for `in` while the path is kCublasGrouped (see ExpertsPath).
  Status SettleExpertsPath(GemmInput in);
};

// dst (n) = src (n) rounded to bf16 (nearest even; NaN stays NaN), as ops::gemm_bf16 rounds its
// inputs. dst holds __nv_bfloat16.
Status ToBf16(void* dst, const float* src, int64_t n, void* stream = nullptr);
// dst (n) = src (n, __nv_bfloat16) widened to fp32 (exact).
Status FromBf16(float* dst, const void* src, int64_t n, void* stream = nullptr);

}  // namespace xt::cuda
