// cuBLASLt GEMM and the grouped expert GEMMs against their CPU twins (ops::gemm, ops::gemm_bf16,
// ops::grouped_linear_forward/backward) on random and awkward shapes: empty dimensions, both
// transposes, accumulation, experts without rows and one expert with every row. Skipped
// (reported as skipped by ctest, label `cuda`) where no GPU is present.
#include "xtuner/cuda/gemm_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/device.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// bf16 copy of a device vector (2 bytes an element), freed with the object.
struct DeviceBf16 {
  void* p = nullptr;
  explicit DeviceBf16(const DeviceVec<float>& v) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(v.n, 1) * 2), cudaSuccess);
    EXPECT_TRUE(cuda::ToBf16(p, v.p, int64_t(v.n)).ok());
  }
  ~DeviceBf16() { cudaFree(p); }
};

using cudatest::RelErr;
std::vector<float> Random(size_t n, unsigned seed) { return cudatest::RandomNormal(n, seed); }

class GemmCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::DeviceAvailable(&why)) GTEST_SKIP() << "skipped: no GPU (" << why << ")";
    auto b = cuda::Blas::Create();
    ASSERT_TRUE(b.ok()) << b.status().message();
    blas_ = std::move(*b);
  }
  std::unique_ptr<cuda::Blas> blas_;
};

struct Case {
  int64_t M, N, K;
};
const Case kCases[] = {{1, 1, 1},    {0, 5, 3},     {7, 0, 3},       {5, 3, 0},
                       {17, 33, 65}, {64, 128, 96}, {257, 129, 511}, {1000, 3, 77}};

TEST_F(GemmCuda, Fp32MatchesOpsGemmForEveryTransposeAndBeta) {
  unsigned seed = 1;
  for (const Case& c : kCases)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (float beta : {0.0f, 1.0f}) {
          const auto a = Random(c.M * c.K, seed++), b = Random(c.K * c.N, seed++);
          auto want = Random(c.M * c.N, seed++);
          DeviceVec<float> da(a), db(b), dc(want);
          ops::gemm(want.data(), a.data(), b.data(), c.M, c.N, c.K, ta, tb, beta);
          ASSERT_TRUE(
              blas_->Gemm(dc.p, da.p, db.p, c.M, c.N, c.K, ta, tb, beta, cuda::GemmInput::kF32)
                  .ok());
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          EXPECT_LT(RelErr(dc.Host(), want), 1e-5) << c.M << "x" << c.N << "x" << c.K << " ta "
                                                   << ta << " tb " << tb << " beta " << beta;
        }
}

TEST_F(GemmCuda, Bf16MatchesOpsGemmBf16) {
  unsigned seed = 100;
  for (const Case& c : kCases)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const auto a = Random(c.M * c.K, seed++), b = Random(c.K * c.N, seed++);
        auto want = Random(c.M * c.N, seed++);
        DeviceVec<float> da(a), db(b), dc(want);
        DeviceBf16 ha(da), hb(db);
        ops::gemm_bf16(want.data(), a.data(), b.data(), c.M, c.N, c.K, ta, tb, 1.0f);
        ASSERT_TRUE(
            blas_->Gemm(dc.p, ha.p, hb.p, c.M, c.N, c.K, ta, tb, 1.0f, cuda::GemmInput::kBf16)
                .ok());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        // The same bf16 inputs summed in fp32 in another order.
        EXPECT_LT(RelErr(dc.Host(), want), 1e-5) << c.M << "x" << c.N << "x" << c.K;
      }
}

// Expert offsets: some experts empty, one with most rows, the rest ragged.
std::vector<int32_t> RaggedOffsets(int64_t E, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> off(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    int32_t rows = e % 3 == 0 ? 0 : int32_t(rng() % 40);
    if (e == 1) rows = 300;
    off[e + 1] = off[e] + rows;
  }
  return off;
}

// Every path (one grouped cuBLAS call, xtuner's grouped kernel in bf16, one call per expert) in
// fp32 and bf16 against the CPU twins (bf16: the CPU's bf16 matmul mode, the same rounded
// operands; fp32 sums either way). I, O = 65, 17 are not multiples of 8: xtuner's kernel does not
// take them, so those products go one per expert.
TEST_F(GemmCuda, GroupedForwardAndBackwardMatchTheCpuTwins) {
  using Path = cuda::Blas::ExpertsPath;
  for (const cuda::GemmInput in : {cuda::GemmInput::kF32, cuda::GemmInput::kBf16})
    for (const Path path : {Path::kCublasGrouped, Path::kXtunerGrouped, Path::kPerExpert})
      for (int64_t E : {1, 5, 16})
        for (auto [I, O] : {std::pair<int64_t, int64_t>{32, 48}, {65, 17}}) {
          const bool bf16 = in == cuda::GemmInput::kBf16;
          if (path == Path::kXtunerGrouped && !bf16) continue;  // bf16 only
          const bool per_expert = path == Path::kPerExpert;
          const std::string what = std::string(bf16 ? "bf16" : "fp32") + " " +
                                   cuda::Blas::ExpertsPathName(path) + " E " + std::to_string(E) +
                                   " I " + std::to_string(I);
          std::vector<int32_t> off = RaggedOffsets(E, unsigned(E * 7 + I));
          if (E == 1) off = {0, 0};  // no rows at all
          const int64_t R = off[E];
          const auto x = Random(R * I, 1), w = Random(E * O * I, 2), dy = Random(R * O, 3);
          std::vector<float> y(R * O), dx(R * I), dw = Random(E * O * I, 4);
          // dw_beta 0: assigned over NaN (not read), against the CPU twin from zeros.
          std::vector<float> dw_set(E * O * I, 0.0f), nans(E * O * I, std::nanf(""));
          DeviceVec<float> dxv(x), dwv(w), ddy(dy), d_y(y), d_dx(dx), d_dw(dw), d_dw_set(nans);
          if (bf16) ops::SetMatmulPrecision(ops::MatmulPrecision::kBf16);
          ops::grouped_linear_forward(y.data(), x.data(), w.data(), off.data(), E, I, O);
          ops::grouped_linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(),
                                       off.data(), E, I, O);
          std::vector<float> dx_again(std::max<int64_t>(R * I, 1));
          ops::grouped_linear_backward(dx_again.data(), dw_set.data(), dy.data(), x.data(),
                                       w.data(), off.data(), E, I, O);
          ops::SetMatmulPrecision(ops::MatmulPrecision::kFp32);
          // The operands as the GPU reads them: fp32, or rounded to bf16 on the device.
          DeviceVec<uint16_t> x16{std::vector<uint16_t>(std::max<int64_t>(R * I, 1))},
              w16{std::vector<uint16_t>(std::max<int64_t>(E * O * I, 1))},
              dy16{std::vector<uint16_t>(std::max<int64_t>(R * O, 1))};
          if (bf16) {
            ASSERT_TRUE(cuda::ToBf16(x16.p, dxv.p, R * I).ok());
            ASSERT_TRUE(cuda::ToBf16(w16.p, dwv.p, E * O * I).ok());
            ASSERT_TRUE(cuda::ToBf16(dy16.p, ddy.p, R * O).ok());
          }
          const void* xa = bf16 ? static_cast<const void*>(x16.p) : dxv.p;
          const void* wa = bf16 ? static_cast<const void*>(w16.p) : dwv.p;
          const void* dya = bf16 ? static_cast<const void*>(dy16.p) : ddy.p;
          blas_->SetExpertsPath(in, path);
          ASSERT_TRUE(blas_->GroupedForward(d_y.p, xa, wa, off.data(), E, I, O, in).ok()) << what;
          ASSERT_TRUE(
              blas_->GroupedBackward(d_dx.p, d_dw.p, dya, xa, wa, off.data(), E, I, O, in).ok())
              << what;
          ASSERT_TRUE(blas_
                          ->GroupedBackward(nullptr, d_dw_set.p, dya, xa, wa, off.data(), E, I, O,
                                            in, /*dw_beta=*/0.0f)
                          .ok())
              << what;
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          const double tol = bf16 ? 1e-4 : 1e-5;
          EXPECT_LT(RelErr(d_y.Host(), y), tol) << what;
          EXPECT_LT(RelErr(d_dx.Host(), dx), tol) << what;
          EXPECT_LT(RelErr(d_dw.Host(), dw), tol) << what;
          if (E == 1) {  // no rows: RelErr's norm would be 0; the assigned dw must be zeros
            for (float v : d_dw_set.Host()) ASSERT_EQ(v, 0.0f) << what;
          } else {
            EXPECT_LT(RelErr(d_dw_set.Host(), dw_set), tol) << what;
          }
          if (!per_expert)
            std::printf("%s: ran %s\n", what.c_str(),
                        cuda::Blas::ExpertsPathName(blas_->experts_path(in)));
        }
}

}  // namespace
}  // namespace xt
