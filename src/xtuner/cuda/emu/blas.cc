// The CUDA emulator's cuBLAS and cuBLASLt (the calls the engine makes): column-major
// C = alpha op(A) op(B) + beta C with fp32 or bf16 inputs, fp32 outputs and fp32 compute, summed in
// double. Arguments are checked as cuBLAS checks them (leading dimensions, types, sizes) and a bad
// one returns CUBLAS_STATUS_INVALID_VALUE. cublasGemmGroupedBatchedEx refuses bf16 inputs with
// CUBLAS_STATUS_NOT_SUPPORTED, so the engine's per-expert fallback runs under the emulator too.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstring>
#include <vector>

#include "xtuner/cuda/emu/state.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
};
struct cublasLtContext {};

namespace {

struct Desc {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
};
struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};
struct Pref {};

static_assert(sizeof(cublasLtMatmulDescOpaque_t) >= sizeof(Desc));
static_assert(sizeof(cublasLtMatrixLayoutOpaque_t) >= sizeof(Layout));

float Load(const void* p, cudaDataType_t t, size_t i) {
  if (t == CUDA_R_32F) return static_cast<const float*>(p)[i];
  uint16_t b;
  std::memcpy(&b, static_cast<const char*>(p) + 2 * i, 2);
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool InType(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }

// C (m, n; ldc) = alpha op(A) (m, k) op(B) (k, n) + beta C, column-major. beta == 0 ignores C's
// old values (NaN included), as cuBLAS does.
cublasStatus_t Gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                    float alpha, const void* A, cudaDataType_t at, int64_t lda, const void* B,
                    cudaDataType_t bt, int64_t ldb, float beta, float* C, int64_t ldc) {
  const bool ta_t = ta != CUBLAS_OP_N, tb_t = tb != CUBLAS_OP_N;
  if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max<int64_t>(1, ta_t ? k : m) || ldb < std::max<int64_t>(1, tb_t ? n : k) ||
      ldc < std::max<int64_t>(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (!InType(at) || at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (!A || !B || !C) return CUBLAS_STATUS_INVALID_VALUE;
  // op(A) (m, k) and op(B) (k, n) in double, column-major and contiguous, so that the loop below
  // runs down contiguous columns.
  std::vector<double> a(size_t(m) * size_t(k)), b(size_t(k) * size_t(n));
  for (int64_t p = 0; p < k; ++p)
    for (int64_t i = 0; i < m; ++i)
      a[size_t(p) * m + i] = Load(A, at, ta_t ? size_t(p + i * lda) : size_t(i + p * lda));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t p = 0; p < k; ++p)
      b[size_t(j) * k + p] = Load(B, bt, tb_t ? size_t(j + p * ldb) : size_t(p + j * ldb));
  std::vector<double> col(static_cast<size_t>(m));
  for (int64_t j = 0; j < n; ++j) {
    std::fill(col.begin(), col.end(), 0.0);
    for (int64_t p = 0; p < k; ++p) {
      const double bp = b[size_t(j) * k + p];
      const double* ap = &a[size_t(p) * m];
      for (int64_t i = 0; i < m; ++i) col[i] += ap[i] * bp;
    }
    float* c = C + j * ldc;
    for (int64_t i = 0; i < m; ++i)
      c[i] = beta == 0.0f ? float(alpha * col[i]) : float(alpha * col[i] + double(beta) * c[i]);
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t st) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!xt::emu::StreamValid(st)) return CUBLAS_STATUS_INVALID_VALUE;
  h->stream = st;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t) {
  return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
const char* cublasGetStatusString(cublasStatus_t st) {
  switch (st) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS (emulator)";
  }
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void* alpha, const void* A, cudaDataType at,
                            int lda, const void* B, cudaDataType bt, int ldb, const void* beta,
                            void* C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (ct != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  return Gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), A, at, lda, B, bt, ldb,
              *static_cast<const float*>(beta), static_cast<float*>(C), ldc);
}

cublasStatus_t cublasGemmGroupedBatchedEx(cublasHandle_t h, const cublasOperation_t transa[],
                                          const cublasOperation_t transb[], const int m[],
                                          const int n[], const int k[], const void* alpha,
                                          const void* const A[], cudaDataType_t at, const int lda[],
                                          const void* const B[], cudaDataType_t bt, const int ldb[],
                                          const void* beta, void* const C[], cudaDataType_t ct,
                                          const int ldc[], int groups, const int group_size[],
                                          cublasComputeType_t compute) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (groups < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F || compute != CUBLAS_COMPUTE_32F)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  const float* alphas = static_cast<const float*>(alpha);
  const float* betas = static_cast<const float*>(beta);
  size_t p = 0;
  for (int g = 0; g < groups; ++g) {
    if (group_size[g] < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < group_size[g]; ++i, ++p) {
      const cublasStatus_t st =
          Gemm(transa[g], transb[g], m[g], n[g], k[g], alphas[g], A[p], at, lda[g], B[p], bt,
               ldb[g], betas[g], static_cast<float*>(C[p]), ldc[g]);
      if (st != CUBLAS_STATUS_SUCCESS) return st;
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (!d) return CUBLAS_STATUS_INVALID_VALUE;
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  *d = new cublasLtMatmulDescOpaque_t{};
  new (*d) Desc{};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete d;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes) {
  if (!d || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  Desc* desc = reinterpret_cast<Desc*>(d);
  if (attr == CUBLASLT_MATMUL_DESC_TRANSA || attr == CUBLASLT_MATMUL_DESC_TRANSB) {
    if (bytes != sizeof(cublasOperation_t)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(attr == CUBLASLT_MATMUL_DESC_TRANSA ? &desc->ta : &desc->tb, buf, bytes);
    return CUBLAS_STATUS_SUCCESS;
  }
  return CUBLAS_STATUS_NOT_SUPPORTED;  // the engine sets no other attribute
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  if (!l) return CUBLAS_STATUS_INVALID_VALUE;
  if (ld < int64_t(std::max<uint64_t>(rows, 1))) return CUBLAS_STATUS_INVALID_VALUE;
  *l = new cublasLtMatrixLayoutOpaque_t{};
  new (*l) Layout{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete l;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  if (!p) return CUBLAS_STATUS_INVALID_VALUE;
  *p = new cublasLtMatmulPreferenceOpaque_t{};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete p;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t,
                                                    const void* buf, size_t) {
  return p && buf ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

// The shapes must chain: op(A) (m, k), op(B) (k, n), C = D (m, n).
static bool Chains(const Desc& d, const Layout& a, const Layout& b, const Layout& c) {
  const uint64_t m = d.ta == CUBLAS_OP_N ? a.rows : a.cols,
                 k = d.ta == CUBLAS_OP_N ? a.cols : a.rows;
  const uint64_t kb = d.tb == CUBLAS_OP_N ? b.rows : b.cols,
                 n = d.tb == CUBLAS_OP_N ? b.cols : b.rows;
  return k == kb && c.rows == m && c.cols == n && a.type == b.type && InType(a.type) &&
         c.type == CUDA_R_32F;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                              cublasLtMatmulPreference_t p, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int* found) {
  if (!h || !d || !a || !b || !c || !dl || !p || requested < 1 || !results || !found)
    return CUBLAS_STATUS_INVALID_VALUE;
  const Desc& desc = *reinterpret_cast<Desc*>(d);
  if (!Chains(desc, *reinterpret_cast<Layout*>(a), *reinterpret_cast<Layout*>(b),
              *reinterpret_cast<Layout*>(c)))
    return CUBLAS_STATUS_INVALID_VALUE;
  results[0] = cublasLtMatmulHeuristicResult_t{};
  results[0].state = CUBLAS_STATUS_SUCCESS;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t al, const void* B,
                              cublasLtMatrixLayout_t bl, const void* beta, const void* C,
                              cublasLtMatrixLayout_t cl, void* D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t stream) {
  if (!h || !d || !al || !bl || !cl || !dl || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  if (!xt::emu::StreamValid(stream)) return CUBLAS_STATUS_INVALID_VALUE;
  const Desc& desc = *reinterpret_cast<Desc*>(d);
  const Layout &a = *reinterpret_cast<Layout*>(al), &b = *reinterpret_cast<Layout*>(bl),
               &c = *reinterpret_cast<Layout*>(cl);
  if (!Chains(desc, a, b, c) || C != D) return CUBLAS_STATUS_INVALID_VALUE;  // the engine: C == D
  const int64_t k = desc.ta == CUBLAS_OP_N ? int64_t(a.cols) : int64_t(a.rows);
  return Gemm(desc.ta, desc.tb, int64_t(c.rows), int64_t(c.cols), k,
              *static_cast<const float*>(alpha), A, a.type, a.ld, B, b.type, b.ld,
              *static_cast<const float*>(beta), static_cast<float*>(D), c.ld);
}

}  // extern "C"
