// gemm in bf16 against a double-precision product of the bf16-rounded inputs: only the fp32
// accumulation differs, on random and awkward shapes, every transpose, assign and accumulate,
// and from inside an OpenMP region (the MoE weight gradients call it there).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "xtuner/core/dtype.h"
#include "xtuner/ops/ops.h"

namespace xt::ops {
namespace {

float Round(float x) { return Bf16ToF32(F32ToBf16(x)); }

// c (M, N) = op(a) op(b) (+ c0) in double over bf16-rounded inputs.
std::vector<double> Reference(const std::vector<float>& a, const std::vector<float>& b,
                              const std::vector<float>& c0, int64_t M, int64_t N, int64_t K,
                              bool ta, bool tb, bool acc) {
  std::vector<double> c(M * N);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = acc ? c0[i * N + j] : 0.0;
      for (int64_t k = 0; k < K; ++k)
        s += double(Round(ta ? a[k * M + i] : a[i * K + k])) *
             double(Round(tb ? b[j * K + k] : b[k * N + j]));
      c[i * N + j] = s;
    }
  return c;
}

double RelError(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Shape {
  int64_t M, N, K;
};

class GemmBf16 : public ::testing::TestWithParam<Shape> {};

TEST_P(GemmBf16, MatchesTheRoundedInputsProduct) {
  const auto [M, N, K] = GetParam();
  std::mt19937 rng(M * 10007 + N * 101 + K);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int flags = 0; flags < 8; ++flags) {
    const bool ta = flags & 1, tb = flags & 2, acc = flags & 4;
    std::vector<float> a(M * K), b(K * N), c(M * N);
    for (float& x : a) x = dist(rng);
    for (float& x : b) x = dist(rng);
    for (float& x : c) x = dist(rng);
    const std::vector<float> c0 = c;
    gemm_bf16(c.data(), a.data(), b.data(), M, N, K, ta, tb, acc ? 1.0f : 0.0f);
    const std::vector<double> want = Reference(a, b, c0, M, N, K, ta, tb, acc);
    EXPECT_LT(RelError(c, want), 2e-6)
        << M << "x" << N << "x" << K << " ta " << ta << " tb " << tb << " acc " << acc;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmBf16,
                         ::testing::Values(Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{1, 64, 17},
                                           Shape{65, 33, 129}, Shape{128, 256, 64},
                                           Shape{7, 1, 300}, Shape{200, 96, 3}));

TEST(GemmBf16, DiffersFromFp32AsRoundingPredicts) {
  const int64_t M = 64, N = 64, K = 256;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> a(M * K), b(K * N), c32(M * N), c16(M * N);
  for (float& x : a) x = dist(rng);
  for (float& x : b) x = dist(rng);
  gemm(c32.data(), a.data(), b.data(), M, N, K, false, false, 0.0f);
  SetMatmulPrecision(MatmulPrecision::kBf16);
  gemm(c16.data(), a.data(), b.data(), M, N, K, false, false, 0.0f);  // routed to gemm_bf16
  SetMatmulPrecision(MatmulPrecision::kFp32);
  std::vector<double> ref(c32.begin(), c32.end());
  const double err = RelError(c16, ref);
  EXPECT_GT(err, 1e-4);  // bf16 has 8 significant bits: about 2^-9 relative per input
  EXPECT_LT(err, 1e-2);
}

TEST(GemmBf16, InsideAnOpenMpRegion) {
  const int64_t M = 40, N = 24, K = 33;
  std::vector<float> a(M * K), b(K * N);
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& x : a) x = dist(rng);
  for (float& x : b) x = dist(rng);
  const std::vector<double> want = Reference(a, b, {}, M, N, K, true, false, false);
  std::vector<std::vector<float>> out(8, std::vector<float>(M * N));
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < 8; ++i)
    gemm_bf16(out[i].data(), a.data(), b.data(), M, N, K, true, false, 0.0f);
  for (const auto& c : out) EXPECT_LT(RelError(c, want), 2e-6);
}

// Under the ctest entry GemmBf16.AsOnAnAvx2Cpu (oneDNN capped at AVX2 by DNNL_MAX_CPU_ISA)
// oneDNN has no bf16 matmul, so gemm_bf16 takes its sgemm path and that run's other tests test
// it. Without the cap there is nothing to check here (either path may be this CPU's).
TEST(GemmBf16, TakesTheSgemmPathWhereOneDnnIsCappedAtAvx2) {
  const char* cap = std::getenv("DNNL_MAX_CPU_ISA");
  if (!cap || std::string(cap) != "AVX2")
    GTEST_SKIP() << "oneDNN not capped at AVX2; this CPU's path: "
                 << (gemm_bf16_native() ? "oneDNN's bf16 matmul" : "sgemm");
  EXPECT_FALSE(gemm_bf16_native());
}

}  // namespace
}  // namespace xt::ops
