// cuBLASLt / cuBLAS GEMMs behind gemm_cuda.h.
//
// Row-major to cuBLAS's column-major: a row-major (M, N) buffer is the column-major (N, M)
// matrix C^T, and C = op(A) op(B) is C^T = op(B)^T op(A)^T. So every call passes b as cuBLAS's
// first operand and a as its second, with m = N, n = M:
//   first  (b): not transposed when b is row-major (K, N) (lda = N), transposed when (N, K)
//               (lda = K);
//   second (a): not transposed when a is row-major (M, K) (ldb = K), transposed when (K, M)
//               (ldb = M);
//   c: ldc = N.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/grouped_gemm_bf16.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

Status BlasCheck(cublasStatus_t st, const std::string& what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::OK();
  return Status::Error("cuBLAS: " + what + ": " + cublasGetStatusString(st));
}

std::string Shape(int64_t M, int64_t N, int64_t K) {
  return std::to_string(M) + " x " + std::to_string(N) + " x " + std::to_string(K);
}

cudaDataType_t InType(GemmInput in) { return in == GemmInput::kBf16 ? CUDA_R_16BF : CUDA_R_32F; }
size_t InBytes(GemmInput in) { return in == GemmInput::kBf16 ? 2 : 4; }

bool FitsInt(int64_t v) { return v >= 0 && v <= INT_MAX; }

__global__ void ToBf16Kernel(__nv_bfloat16* dst, const float* src, int64_t n) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads())
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void FromBf16Kernel(float* dst, const __nv_bfloat16* src, int64_t n) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads())
    dst[i] = __bfloat162float(src[i]);
}

// c (beta 0: assign, 1: accumulate) when K = 0: the empty sum.
__global__ void ScaleKernel(float* c, int64_t n, float beta) {
  for (int64_t i = detail::GlobalThread(); i < n; i += detail::GridThreads())
    c[i] = beta == 0.0f ? 0.0f : beta * c[i];
}

}  // namespace

Status ToBf16(void* dst, const float* src, int64_t n, void* stream) {
  if (n <= 0) return Status::OK();
  XT_LAUNCH(ToBf16Kernel, detail::BlocksFor(n), detail::kThreads, 0, cudaStream_t(stream))
  (static_cast<__nv_bfloat16*>(dst), src, n);
  return Check(cudaGetLastError(), "ToBf16");
}

Status FromBf16(float* dst, const void* src, int64_t n, void* stream) {
  if (n <= 0) return Status::OK();
  XT_LAUNCH(FromBf16Kernel, detail::BlocksFor(n), detail::kThreads, 0, cudaStream_t(stream))
  (dst, static_cast<const __nv_bfloat16*>(src), n);
  return Check(cudaGetLastError(), "FromBf16");
}

Result<std::unique_ptr<Blas>> Blas::Create(void* stream) {
  std::unique_ptr<Blas> b(new Blas());
  b->stream_ = stream;
  cublasHandle_t h = nullptr;
  XT_RETURN_IF_ERROR(BlasCheck(cublasCreate(&h), "cublasCreate"));
  b->blas_ = h;
  XT_RETURN_IF_ERROR(BlasCheck(cublasSetStream(h, cudaStream_t(stream)), "cublasSetStream"));
  // Full fp32 products for fp32 inputs (no TF32), as the CPU twin.
  XT_RETURN_IF_ERROR(
      BlasCheck(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode(pedantic)"));
  cublasLtHandle_t lt = nullptr;
  XT_RETURN_IF_ERROR(BlasCheck(cublasLtCreate(&lt), "cublasLtCreate"));
  b->lt_ = lt;
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->workspace_, kWorkspaceBytes), "GEMM workspace"));
  b->workspace_bytes_ = kWorkspaceBytes;
  return std::move(b);  // (nvcc in C++17 does not move a local into Result implicitly)
}

Blas::~Blas() {
  if (pointers_) cudaFree(pointers_);
  if (workspace_) cudaFree(workspace_);
  if (lt_) cublasLtDestroy(cublasLtHandle_t(lt_));
  if (blas_) cublasDestroy(cublasHandle_t(blas_));
}

Status Blas::Gemm(float* c, const void* a, const void* b, int64_t M, int64_t N, int64_t K, bool ta,
                  bool tb, float beta, GemmInput in) {
  if (!FitsInt(M) || !FitsInt(N) || !FitsInt(K))
    return Status::Error("GEMM " + Shape(M, N, K) + ": a dimension exceeds INT_MAX");
  if (beta != 0.0f && beta != 1.0f) return Status::Error("GEMM: beta must be 0 or 1");
  if (M == 0 || N == 0) return Status::OK();
  cudaStream_t stream = cudaStream_t(stream_);
  if (K == 0) {
    XT_LAUNCH(ScaleKernel, detail::BlocksFor(M * N), detail::kThreads, 0, stream)(c, M * N, beta);
    return Check(cudaGetLastError(), "GEMM with K = 0");
  }
  const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = int(N), n = int(M), k = int(K);
  const int lda = int(tb ? K : N), ldb = int(ta ? M : K), ldc = int(N);
  const cudaDataType_t t = InType(in);

  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  auto cleanup = [&] {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
  };
  const std::string what = "GEMM " + Shape(M, N, K);
  Status st = BlasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), what);
  if (st.ok())
    st = BlasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                  sizeof(op_first)),
                   what);
  if (st.ok())
    st = BlasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                  sizeof(op_second)),
                   what);
  // Layouts of the stored matrices: (rows, cols, ld) column-major.
  if (st.ok())
    st = BlasCheck(cublasLtMatrixLayoutCreate(&la, t, op_first == CUBLAS_OP_N ? m : k,
                                              op_first == CUBLAS_OP_N ? k : m, lda),
                   what);
  if (st.ok())
    st = BlasCheck(cublasLtMatrixLayoutCreate(&lb, t, op_second == CUBLAS_OP_N ? k : n,
                                              op_second == CUBLAS_OP_N ? n : k, ldb),
                   what);
  if (st.ok()) st = BlasCheck(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, ldc), what);
  if (st.ok()) st = BlasCheck(cublasLtMatmulPreferenceCreate(&pref), what);
  if (st.ok())
    st = BlasCheck(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace_bytes_, sizeof(workspace_bytes_)),
        what);
  // The pointers' actual alignment (cuBLASLt otherwise assumes 256 bytes): slab offsets and
  // per-expert rows are only as aligned as their sizes make them.
  auto alignment = [](const void* ptr) {
    uint32_t align = 256;
    while (align > 1 && reinterpret_cast<uintptr_t>(ptr) % align != 0) align /= 2;
    return align;
  };
  const uint32_t align_first = alignment(b), align_second = alignment(a), align_c = alignment(c);
  const std::pair<cublasLtMatmulPreferenceAttributes_t, const uint32_t*> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c}};
  for (const auto& [attr, value] : aligns)
    if (st.ok())
      st = BlasCheck(cublasLtMatmulPreferenceSetAttribute(pref, attr, value, sizeof(uint32_t)),
                     what);
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  if (st.ok())
    st = BlasCheck(cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t(lt_), desc, la, lb, lc, lc, pref,
                                                  1, &heuristic, &found),
                   what);
  if (st.ok() && found == 0) st = Status::Error("cuBLASLt: no algorithm for " + what);
  const float alpha = 1.0f;
  if (st.ok())
    st = BlasCheck(cublasLtMatmul(cublasLtHandle_t(lt_), desc, &alpha, b, la, a, lb, &beta, c, lc,
                                  c, lc, &heuristic.algo, workspace_, workspace_bytes_, stream),
                   what);
  cleanup();
  return st;
}

Status Blas::Grouped(const Problem* problems, int64_t count, bool ta, bool tb, float beta,
                     GemmInput in) {
  if (count == 0) return Status::OK();
  if (count > INT_MAX / 3) return Status::Error("grouped GEMM: too many experts");
  // One cublasGemmEx per expert, with the grouped call's column-major arguments (cuBLAS picks the
  // kernel itself: less host work per call than a cuBLASLt plan with its heuristic query, which
  // matters with 128 experts); a cuBLASLt GEMM where cublasGemmEx refuses the types.
  auto one_by_one = [&]() -> Status {
    const cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType_t t = InType(in);
    const float alpha = 1.0f;
    for (int64_t i = 0; i < count; ++i) {
      const Problem& p = problems[i];
      const cublasStatus_t st = cublasGemmEx(
          cublasHandle_t(blas_), op_a, op_b, p.m, p.n, p.k, &alpha, p.a, t, p.lda, p.b, t, p.ldb,
          &beta, p.c, CUDA_R_32F, p.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st == CUBLAS_STATUS_SUCCESS) continue;
      if (st != CUBLAS_STATUS_NOT_SUPPORTED) return BlasCheck(st, "expert GEMM");
      // Back to row-major terms: C (n, m) = op(second) (n, k) @ op(first) (k, m).
      XT_RETURN_IF_ERROR(Gemm(p.c, p.b, p.a, p.n, p.m, p.k, ta, tb, beta, in));
    }
    return Status::OK();
  };
  ExpertsPath& path = path_[Index(in)];
  if (path != ExpertsPath::kCublasGrouped) return one_by_one();
  const cublasOperation_t op_first = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int g = int(count);
  std::vector<cublasOperation_t> transa(g, op_first), transb(g, op_second);
  std::vector<int> m(g), n(g), k(g), lda(g), ldb(g), ldc(g), size(g, 1);
  std::vector<float> alpha(g, 1.0f), betas(g, beta);
  std::vector<const void*> host_ptrs(3 * size_t(g));
  for (int i = 0; i < g; ++i) {
    const Problem& p = problems[i];
    m[i] = p.m, n[i] = p.n, k[i] = p.k, lda[i] = p.lda, ldb[i] = p.ldb, ldc[i] = p.ldc;
    host_ptrs[i] = p.a;
    host_ptrs[g + i] = p.b;
    host_ptrs[2 * g + i] = p.c;
  }
  cudaStream_t stream = cudaStream_t(stream_);
  if (pointer_capacity_ < g) {
    if (pointers_) XT_RETURN_IF_ERROR(Check(cudaFree(pointers_), "grouped GEMM pointers"));
    pointers_ = nullptr;
    XT_RETURN_IF_ERROR(
        Check(cudaMalloc(&pointers_, 3 * size_t(g) * sizeof(void*)), "grouped GEMM pointers"));
    pointer_capacity_ = g;
  }
  // From pageable memory: the call returns once the pointers are staged, and the copy runs in
  // stream order, after the previous call's GEMM has read the old ones.
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpyAsync(pointers_, host_ptrs.data(), 3 * size_t(g) * sizeof(void*),
                            cudaMemcpyHostToDevice, stream),
            "grouped GEMM pointers"));
  const void* const* dev = static_cast<const void* const*>(pointers_);
  const cudaDataType_t t = InType(in);
  const cublasStatus_t st =
      cublasGemmGroupedBatchedEx(cublasHandle_t(blas_), transa.data(), transb.data(), m.data(),
                                 n.data(), k.data(), alpha.data(), dev, t, lda.data(), dev + g, t,
                                 ldb.data(), betas.data(), const_cast<void* const*>(dev + 2 * g),
                                 CUDA_R_32F, ldc.data(), g, size.data(), CUBLAS_COMPUTE_32F);
  // cuBLAS documents which type combinations it groups; bf16 inputs with fp32 outputs may not
  // be among them (refused as not supported, or as an invalid value for these types).
  const bool refused = st == CUBLAS_STATUS_NOT_SUPPORTED ||
                       (st == CUBLAS_STATUS_INVALID_VALUE && in == GemmInput::kBf16);
  if (!refused) return BlasCheck(st, "grouped GEMM");
  // This cuBLAS cannot group these types: this call (SettleExpertsPath's probe, in practice) one
  // GEMM per expert, later ones on xtuner's grouped kernel (bf16) or one per expert (said once: a
  // refusal that is really a bad argument would show here).
  path = in == GemmInput::kBf16 ? ExpertsPath::kXtunerGrouped : ExpertsPath::kPerExpert;
  std::fprintf(stderr,
               "xtuner: cuBLAS refused a grouped GEMM of %s inputs (status %d): the experts' "
               "products run %s from now on\n",
               in == GemmInput::kBf16 ? "bf16" : "fp32", int(st),
               in == GemmInput::kBf16 ? "on xtuner's grouped kernel" : "as one GEMM per expert");
  return one_by_one();
}

const char* Blas::ExpertsPathName(ExpertsPath path) {
  switch (path) {
    case ExpertsPath::kCublasGrouped:
      return "cublas-grouped";
    case ExpertsPath::kXtunerGrouped:
      return "xtuner-grouped";
    case ExpertsPath::kPerExpert:
      return "per-expert";
  }
  return "?";
}

bool Blas::ParseExpertsPath(const std::string& name, ExpertsPath* path) {
  for (ExpertsPath p :
       {ExpertsPath::kCublasGrouped, ExpertsPath::kXtunerGrouped, ExpertsPath::kPerExpert})
    if (name == ExpertsPathName(p)) {
      *path = p;
      return true;
    }
  return false;
}

Status Blas::SettleExpertsPath(GemmInput in) {
  bool& probed = probed_[Index(in)];
  if (probed || path_[Index(in)] != ExpertsPath::kCublasGrouped) return Status::OK();
  probed = true;
  // One 16 x 16 x 16 product of zeros on scratch: cuBLAS groups these types, or refuses them and
  // Grouped moves the path, before the first real product (so every step takes the same path).
  constexpr int kN = 16;
  detail::Scratch scratch{cudaStream_t(stream_)};
  unsigned char* ab = nullptr;
  float* c = nullptr;
  const size_t bytes = 2 * kN * kN * InBytes(in);
  XT_RETURN_IF_ERROR(scratch.Alloc(&ab, int64_t(bytes), "grouped GEMM probe"));
  XT_RETURN_IF_ERROR(scratch.Alloc(&c, kN * kN, "grouped GEMM probe"));
  XT_RETURN_IF_ERROR(
      Check(cudaMemsetAsync(ab, 0, bytes, cudaStream_t(stream_)), "grouped GEMM probe"));
  const Problem p{ab, ab + bytes / 2, c, kN, kN, kN, kN, kN, kN};
  const Status st = Grouped(&p, 1, false, false, 0.0f, in);
  const Status freed = scratch.Release("grouped GEMM probe");
  return st.ok() ? freed : st;
}

bool Blas::XtunerGrouped(GroupedOp op, int64_t M, int64_t N, int64_t K, const void* a,
                         const void* b, GemmInput in) const {
  return in == GemmInput::kBf16 && path_[Index(in)] == ExpertsPath::kXtunerGrouped &&
         GroupedGemmBf16Supports(op, M, N, K) && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

Status Blas::GroupedForward(float* y, const void* x, const void* w, const int32_t* offsets,
                            int64_t E, int64_t I, int64_t O, GemmInput in) {
  if (!FitsInt(I) || !FitsInt(O)) return Status::Error("grouped GEMM: I or O exceeds INT_MAX");
  XT_RETURN_IF_ERROR(SettleExpertsPath(in));
  // y (R, O) = x_e (rows, I) w_e^T.
  if (XtunerGrouped(GroupedOp::kForward, 0, O, I, x, w, in))
    return GroupedGemmBf16(GroupedOp::kForward, y, x, w, offsets, E, 0, O, I, stream_);
  const size_t es = InBytes(in);
  std::vector<Problem> problems;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows < 0 || !FitsInt(rows)) return Status::Error("grouped GEMM: bad expert offsets");
    if (rows == 0 || I == 0 || O == 0) continue;
    // y_e (rows, O) = x_e (rows, I) @ w_e^T: row-major M = rows, N = O, K = I, tb.
    problems.push_back({static_cast<const char*>(w) + size_t(e * O * I) * es,
                        static_cast<const char*>(x) + size_t(r0 * I) * es, y + r0 * O, int(O),
                        int(rows), int(I), int(I), int(I), int(O)});
  }
  if (I == 0 && O > 0 && offsets[E] > 0) {  // the empty sum: y = 0
    XT_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(y, 0, size_t(offsets[E] * O) * sizeof(float), cudaStream_t(stream_)),
              "grouped GEMM"));
  }
  return Grouped(problems.data(), int64_t(problems.size()), false, true, 0.0f, in);
}

Status Blas::GroupedBackward(float* dx, float* dw, const void* dy, const void* x, const void* w,
                             const int32_t* offsets, int64_t E, int64_t I, int64_t O, GemmInput in,
                             float dw_beta) {
  if (!FitsInt(I) || !FitsInt(O)) return Status::Error("grouped GEMM: I or O exceeds INT_MAX");
  if (dw_beta != 0.0f && dw_beta != 1.0f)
    return Status::Error("grouped GEMM: dw_beta must be 0 or 1, not " + std::to_string(dw_beta));
  XT_RETURN_IF_ERROR(SettleExpertsPath(in));
  // dx (R, I) = dy_e (rows, O) w_e (O, I); dw_e (O, I) = dy_e^T x_e + dw_beta dw_e.
  if (XtunerGrouped(GroupedOp::kData, 0, I, O, dy, w, in) &&
      (!dw || XtunerGrouped(GroupedOp::kWeight, O, I, 0, dy, x, in))) {
    if (dx)
      XT_RETURN_IF_ERROR(
          GroupedGemmBf16(GroupedOp::kData, dx, dy, w, offsets, E, 0, I, O, stream_));
    if (!dw) return Status::OK();
    return GroupedGemmBf16(GroupedOp::kWeight, dw, dy, x, offsets, E, O, I, 0, stream_,
                           dw_beta != 0.0f);
  }
  const size_t es = InBytes(in);
  std::vector<Problem> data_grad, weight_grad;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows < 0 || !FitsInt(rows)) return Status::Error("grouped GEMM: bad expert offsets");
    if (I == 0 || O == 0) continue;
    if (rows == 0) {  // the empty sum: an assigned dw_e is zero
      if (dw && dw_beta == 0.0f)
        XT_RETURN_IF_ERROR(Check(cudaMemsetAsync(dw + e * O * I, 0, size_t(O * I) * sizeof(float),
                                                 cudaStream_t(stream_)),
                                 "grouped GEMM"));
      continue;
    }
    const char* w_e = static_cast<const char*>(w) + size_t(e * O * I) * es;
    const char* x_e = dw ? static_cast<const char*>(x) + size_t(r0 * I) * es : nullptr;
    const char* dy_e = static_cast<const char*>(dy) + size_t(r0 * O) * es;
    // dx_e (rows, I) = dy_e (rows, O) @ w_e (O, I): M = rows, N = I, K = O.
    if (dx)
      data_grad.push_back(
          {w_e, dy_e, dx + r0 * I, int(I), int(rows), int(O), int(I), int(O), int(I)});
    // dw_e (O, I) += dy_e^T (O, rows) @ x_e (rows, I): M = O, N = I, K = rows, ta.
    if (dw)
      weight_grad.push_back(
          {x_e, dy_e, dw + e * O * I, int(I), int(O), int(rows), int(I), int(O), int(I)});
  }
  if (dx && O == 0 && offsets[E] > 0) {  // the empty sum: dx = 0
    XT_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(dx, 0, size_t(offsets[E] * I) * sizeof(float), cudaStream_t(stream_)),
              "grouped GEMM"));
  }
  if (dx) {
    XT_RETURN_IF_ERROR(
        Grouped(data_grad.data(), int64_t(data_grad.size()), false, false, 0.0f, in));
  }
  if (!dw) return Status::OK();
  return Grouped(weight_grad.data(), int64_t(weight_grad.size()), true, false, dw_beta, in);
}

}  // namespace xt::cuda
