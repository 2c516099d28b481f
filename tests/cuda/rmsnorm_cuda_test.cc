// CUDA RMSNorm against its CPU twin (ops::rmsnorm_forward) on random and awkward shapes. Skipped
// (reported as skipped by ctest, label `cuda`) where no GPU is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

class RmsnormCuda : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::DeviceAvailable(&why)) GTEST_SKIP() << "skipped: no GPU (" << why << ")";
  }
};

TEST_P(RmsnormCuda, MatchesTheCpuTwin) {
  const auto [N, C] = GetParam();
  std::mt19937 rng(unsigned(N * 131 + C));
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> x(N * C), w(C), y(N * C), rstd(N);
  for (float& v : x) v = dist(rng);
  for (float& v : w) v = dist(rng);
  ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
  const std::vector<float> zeros_y(N * C), zeros_r(N);
  DeviceVec<float> dx(x), dw(w), dy(zeros_y), dr(zeros_r);
  ASSERT_TRUE(cuda::RmsnormForward(dy.p, dr.p, dx.p, dw.p, N, C, 1e-6f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> gy = dy.Host(), gr = dr.Host();
  for (int64_t i = 0; i < N; ++i) EXPECT_NEAR(gr[i], rstd[i], 1e-5 * std::abs(rstd[i])) << i;
  for (int64_t i = 0; i < N * C; ++i)
    ASSERT_NEAR(gy[i], y[i], 1e-5 * std::abs(y[i]) + 1e-6) << "element " << i;

  // The bf16 output (bf16 mode): the fp32 output rounded to nearest even, bit for bit, and the
  // same rstd.
  DeviceVec<uint16_t> dy16{std::vector<uint16_t>(N * C)};
  DeviceVec<float> dr16(zeros_r);
  ASSERT_TRUE(cuda::RmsnormForward(dy16.p, dr16.p, dx.p, dw.p, N, C, 1e-6f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudatest::ExpectRoundedBitForBit(dy16.Host(), gy, "out bf16");
  cudatest::ExpectBitEqual(dr16.Host(), gr, "rstd beside bf16 out");
}

// One row, one column, sizes that are not a multiple of the block, a large C, zero rows.
INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsnormCuda,
    ::testing::Values(std::pair<int64_t, int64_t>{1, 1}, std::pair<int64_t, int64_t>{3, 7},
                      std::pair<int64_t, int64_t>{17, 257}, std::pair<int64_t, int64_t>{64, 2048},
                      std::pair<int64_t, int64_t>{5, 12289}, std::pair<int64_t, int64_t>{0, 64}));

}  // namespace
}  // namespace xt
