// ops::gemm in bf16 (MatmulPrecision::kBf16): a and b rounded to bf16 (to nearest, ties to even),
// products summed in fp32, on oneDNN's matmul primitive (AMX or AVX-512 BF16 where the CPU has
// them). One primitive per (ta, tb, accumulate), with M, N, K and the strides given at run time,
// so the uneven row counts of the MoE experts never build a new kernel. Where oneDNN has no bf16
// matmul for the CPU (Debian's oneDNN 2.x needs AVX-512; an AVX2-only CPU has none), the rounded
// operands are widened back to fp32 and multiplied by sgemm: a product of two bf16 values is
// exact in fp32, so that is the same product, summed in fp32 in another order.
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "xtuner/core/dtype.h"
#include "xtuner/core/status.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {
namespace {

MatmulPrecision g_precision = MatmulPrecision::kFp32;

void Ok(dnnl_status_t st, const char* what) {
  XT_CHECK(st == dnnl_success,
           std::string("oneDNN ") + what + " failed with status " + std::to_string(int(st)));
}

dnnl_engine_t Engine() {
  static dnnl_engine_t engine = [] {
    dnnl_engine_t e;
    Ok(dnnl_engine_create(&e, dnnl_cpu, 0), "engine");
    return e;
  }();
  return engine;
}

// Memory descriptors of op(a) (M, K), op(b) (K, N) and c (M, N); dims and strides are
// DNNL_RUNTIME_DIM_VAL for the primitive, real for an execution.
struct Descs {
  dnnl_memory_desc_t a, b, c;
};
Descs MakeDescs(int64_t M, int64_t N, int64_t K, bool ta, bool tb) {
  Descs d;
  const dnnl_dims_t ad = {M, K}, bd = {K, N}, cd = {M, N};
  const dnnl_dims_t as = {ta ? 1 : K, ta ? M : 1}, bs = {tb ? 1 : N, tb ? K : 1}, cs = {N, 1};
  Ok(dnnl_memory_desc_init_by_strides(&d.a, 2, ad, dnnl_bf16, as), "memory desc");
  Ok(dnnl_memory_desc_init_by_strides(&d.b, 2, bd, dnnl_bf16, bs), "memory desc");
  Ok(dnnl_memory_desc_init_by_strides(&d.c, 2, cd, dnnl_f32, cs), "memory desc");
  return d;
}

// The matmul primitive for (ta, tb, accumulate); null where oneDNN has none for this CPU.
dnnl_primitive_t Primitive(bool ta, bool tb, bool accumulate) {
  static std::mutex mu;
  static std::map<std::tuple<bool, bool, bool>, dnnl_primitive_t> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto [it, fresh] = cache.try_emplace({ta, tb, accumulate}, nullptr);
  if (!fresh) return it->second;
  const int64_t R = DNNL_RUNTIME_DIM_VAL;
  Descs d = MakeDescs(R, R, R, ta, tb);
  dnnl_matmul_desc_t md;
  Ok(dnnl_matmul_desc_init(&md, &d.a, &d.b, nullptr, &d.c), "matmul desc");
  dnnl_primitive_attr_t attr;
  Ok(dnnl_primitive_attr_create(&attr), "attr");
  if (accumulate) {
    dnnl_post_ops_t po;
    Ok(dnnl_post_ops_create(&po), "post ops");
    Ok(dnnl_post_ops_append_sum(po, 1.0f), "sum post op");
    Ok(dnnl_primitive_attr_set_post_ops(attr, po), "post ops");
    dnnl_post_ops_destroy(po);
  }
  dnnl_primitive_desc_t pd;
  const dnnl_status_t st = dnnl_primitive_desc_create(&pd, &md, attr, Engine(), nullptr);
  dnnl_primitive_attr_destroy(attr);
  if (st == dnnl_unimplemented) return nullptr;  // cached: no bf16 matmul on this CPU
  Ok(st, "matmul primitive desc");
  Ok(dnnl_primitive_create(&it->second, pd), "matmul primitive");
  dnnl_primitive_desc_destroy(pd);
  return it->second;
}

// x (n) rounded to bf16 and widened back to fp32.
void RoundedF32(std::vector<float>* out, const float* x, int64_t n) {
  out->resize(size_t(n));
  float* o = out->data();
#pragma omp parallel for schedule(static) if (n > (1 << 16) && !omp_in_parallel())
  for (int64_t i = 0; i < n; ++i) o[i] = Bf16ToF32(F32ToBf16(x[i]));
}

void ToBf16(std::vector<uint16_t>* out, const float* x, int64_t n) {
  out->resize(size_t(n));
  uint16_t* o = out->data();
#pragma omp parallel for schedule(static) if (n > (1 << 16) && !omp_in_parallel())
  for (int64_t i = 0; i < n; ++i) o[i] = F32ToBf16(x[i]);
}

}  // namespace

bool gemm_bf16_native() { return Primitive(false, false, false) != nullptr; }

void SetMatmulPrecision(MatmulPrecision p) { g_precision = p; }
MatmulPrecision GetMatmulPrecision() { return g_precision; }

void gemm_bf16(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, bool ta,
               bool tb, float beta) {
  XT_CHECK(beta == 0.0f || beta == 1.0f, "gemm_bf16: beta must be 0 or 1");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: c = beta * c
    if (beta == 0.0f)
      for (int64_t i = 0; i < M * N; ++i) c[i] = 0.0f;
    return;
  }
  const dnnl_primitive_t matmul = Primitive(ta, tb, beta != 0.0f);
  if (!matmul) {  // the rounded operands in fp32, through sgemm
    thread_local std::vector<float> a32, b32;
    RoundedF32(&a32, a, M * K);
    RoundedF32(&b32, b, K * N);
    return gemm_f32(c, a32.data(), b32.data(), M, N, K, ta, tb, beta);
  }
  thread_local std::vector<uint16_t> a16, b16;
  ToBf16(&a16, a, M * K);
  ToBf16(&b16, b, K * N);
  thread_local dnnl_stream_t stream = [] {
    dnnl_stream_t s;
    Ok(dnnl_stream_create(&s, Engine(), dnnl_stream_default_flags), "stream");
    return s;
  }();
  Descs d = MakeDescs(M, N, K, ta, tb);
  dnnl_memory_t am, bm, cm;
  Ok(dnnl_memory_create(&am, &d.a, Engine(), a16.data()), "memory");
  Ok(dnnl_memory_create(&bm, &d.b, Engine(), b16.data()), "memory");
  Ok(dnnl_memory_create(&cm, &d.c, Engine(), c), "memory");
  const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
  Ok(dnnl_primitive_execute(matmul, stream, 3, args), "matmul");
  Ok(dnnl_stream_wait(stream), "stream wait");
  dnnl_memory_destroy(am);
  dnnl_memory_destroy(bm);
  dnnl_memory_destroy(cm);
}

}  // namespace xt::ops
