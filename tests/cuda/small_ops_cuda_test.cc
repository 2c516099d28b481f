// The small GPU ops of loss_cuda.h against their CPU twins, bit for bit: MoeBalanceStats
// (ops::moe_balance_stats: prob_sum in the CPU's token order, integer counts), AddInPlace,
// BroadcastRow and DoubleToFloatScaled (one IEEE operation per element each). Skipped (label
// `cuda`) where no GPU is present, except the argument checks (no device needed).
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/ops/ops.h"
#include "xtuner/optim/clip.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

void ExpectBitEqualDouble(const std::vector<double>& got, const std::vector<double>& want,
                          const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint64_t>(got[i]), std::bit_cast<uint64_t>(want[i]))
        << what << " element " << i << ": " << got[i] << " vs " << want[i];
}

// ---------------------------------------------------------------- MoeBalanceStats
// (T, E, k)
class BalanceStatsCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(BalanceStatsCuda, BitIdenticalToTheCpu) {
  const auto [T, E, k] = GetParam();
  std::mt19937 rng(unsigned(T * 131 + E * 7 + k));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> probs(T * E);
  for (float& p : probs) p = u(rng);
  std::vector<int32_t> idx(T * k);
  for (int32_t& e : idx) e = int32_t(rng() % uint32_t(E));
  if (T * k > 2) {
    idx[0] = -1;              // outside [0, E): counts for no expert
    idx[1] = int32_t(E);      // likewise
    idx[2] = int32_t(E - 1);  // the last expert
  }
  // Non-zero starting values: count integral, prob_sum arbitrary.
  std::vector<double> count(E), prob_sum(E);
  for (int64_t e = 0; e < E; ++e) {
    count[e] = double(e % 5);
    prob_sum[e] = 0.1 * double(e) + 1.0 / 3.0;
  }
  DeviceVec<double> gcount(count), gprob(prob_sum);
  DeviceVec<float> gprobs(probs);
  DeviceVec<int32_t> gidx(idx);
  ops::moe_balance_stats(count.data(), prob_sum.data(), probs.data(), idx.data(), T, E, k);
  ASSERT_TRUE(cuda::MoeBalanceStats(gcount.p, gprob.p, gprobs.p, gidx.p, T, E, k).ok());
  cudatest::Sync();
  ExpectBitEqualDouble(gcount.Host(), count, "count");
  ExpectBitEqualDouble(gprob.Host(), prob_sum, "prob_sum");
}

std::string BalanceName(const ::testing::TestParamInfo<BalanceStatsCuda::ParamType>& info) {
  const auto& [T, E, k] = info.param;
  return std::to_string(T) + "x" + std::to_string(E) + "x" + std::to_string(k);
}

// One token, k = E, a tail after the unrolled walk (T % 8 != 0), a model-sized router over many
// tokens, E not a multiple of a warp, k = 0, no tokens.
INSTANTIATE_TEST_SUITE_P(Shapes, BalanceStatsCuda,
                         ::testing::Values(std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                                           std::tuple<int64_t, int64_t, int64_t>{3, 4, 4},
                                           std::tuple<int64_t, int64_t, int64_t>{37, 8, 2},
                                           std::tuple<int64_t, int64_t, int64_t>{4099, 128, 8},
                                           std::tuple<int64_t, int64_t, int64_t>{5, 257, 3},
                                           std::tuple<int64_t, int64_t, int64_t>{100, 64, 0},
                                           std::tuple<int64_t, int64_t, int64_t>{0, 8, 2}),
                         BalanceName);

// ---------------------------------------------------------------- elementwise ops
class ElementwiseCuda : public cudatest::CudaTest<int64_t> {};

TEST_P(ElementwiseCuda, AddInPlace) {
  const int64_t n = GetParam();
  const auto x = cudatest::RandomNormal(n, 1);
  auto y = cudatest::RandomNormal(n, 2);
  DeviceVec<float> gx(x), gy(y);
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  ASSERT_TRUE(cuda::AddInPlace(gy.p, gx.p, n).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gy.Host(), y, "y");
}

TEST_P(ElementwiseCuda, DoubleToFloatScaled) {
  const int64_t n = GetParam();
  std::mt19937 rng(3);
  std::normal_distribution<double> d(0.0, 1e3);
  std::vector<double> in(n);
  for (double& v : in) v = d(rng);
  for (const double scale : {1.0, 1.0 / 3.0, 1e-30}) {
    std::vector<float> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = float(in[i] * scale);
    DeviceVec<double> gin(in);
    DeviceVec<float> gout{std::vector<float>(n, 7.0f)};
    ASSERT_TRUE(cuda::DoubleToFloatScaled(gout.p, gin.p, n, scale).ok());
    cudatest::Sync();
    cudatest::ExpectBitEqual(gout.Host(), want, "out");
  }
}

// The gradient norm's square: the CPU's sum (optim/clip.h) to double rounding, and the same bits
// on a second run (fixed grid and trees). Sizes past 1024 blocks' worth reuse threads.
TEST_P(ElementwiseCuda, SumOfSquares) {
  for (const int64_t n : {GetParam(), GetParam() * 5 + 262147}) {
    const auto x = cudatest::RandomNormal(n, 5);
    DeviceVec<float> gx(x);
    DeviceVec<double> out{std::vector<double>(2, -1.0)};
    ASSERT_TRUE(cuda::SumOfSquares(out.p, gx.p, n).ok());
    ASSERT_TRUE(cuda::SumOfSquares(out.p + 1, gx.p, n).ok());
    cudatest::Sync();
    const std::vector<double> got = out.Host();
    const double want = sum_of_squares(x.data(), n);
    EXPECT_NEAR(got[0], want, 1e-12 * want) << n;
    EXPECT_EQ(std::bit_cast<uint64_t>(got[0]), std::bit_cast<uint64_t>(got[1])) << n;
  }
}

// Empty, one element, not a multiple of a block, many blocks.
INSTANTIATE_TEST_SUITE_P(Sizes, ElementwiseCuda,
                         ::testing::Values(int64_t(0), int64_t(1), int64_t(1001), int64_t(70001)),
                         [](const auto& info) { return std::to_string(info.param); });

// More elements than one grid-stride pass covers (kStrideBlocks * kThreads = 2^24).
class ElementwiseCudaLarge : public cudatest::CudaTest<int> {};

TEST_F(ElementwiseCudaLarge, AddInPlaceBeyondOneGridPass) {
  const int64_t n = (int64_t(1) << 24) + 3;
  std::vector<float> x(n), y(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = float(i % 1009) * 0.25f;
    y[i] = float(i % 997) - 3.5f;
  }
  DeviceVec<float> gx(x), gy(y);
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  ASSERT_TRUE(cuda::AddInPlace(gy.p, gx.p, n).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gy.Host(), y, "y");
}

// (T, E)
class BroadcastRowCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t>> {};

TEST_P(BroadcastRowCuda, RepeatsTheRow) {
  const auto [T, E] = GetParam();
  const auto row = cudatest::RandomNormal(E, 4);
  std::vector<float> want(T * E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) want[t * E + e] = row[e];
  DeviceVec<float> grow(row), gout{std::vector<float>(T * E, 7.0f)};
  ASSERT_TRUE(cuda::BroadcastRow(gout.p, grow.p, T, E).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout.Host(), want, "out");
}

std::string BroadcastName(const ::testing::TestParamInfo<BroadcastRowCuda::ParamType>& info) {
  const auto& [T, E] = info.param;
  return std::to_string(T) + "x" + std::to_string(E);
}

INSTANTIATE_TEST_SUITE_P(Shapes, BroadcastRowCuda,
                         ::testing::Values(std::tuple<int64_t, int64_t>{0, 5},
                                           std::tuple<int64_t, int64_t>{5, 0},
                                           std::tuple<int64_t, int64_t>{3, 1},
                                           std::tuple<int64_t, int64_t>{37, 129},
                                           std::tuple<int64_t, int64_t>{4096, 128}),
                         BroadcastName);

// Bad sizes are errors and zero sizes are no-ops, found before anything touches the device.
TEST(SmallOpsCudaArgs, RejectsNegativeSizes) {
  EXPECT_FALSE(cuda::MoeBalanceStats(nullptr, nullptr, nullptr, nullptr, -1, 8, 2).ok());
  EXPECT_FALSE(cuda::MoeBalanceStats(nullptr, nullptr, nullptr, nullptr, 4, 8, -2).ok());
  EXPECT_FALSE(cuda::AddInPlace(nullptr, nullptr, -1).ok());
  EXPECT_FALSE(cuda::BroadcastRow(nullptr, nullptr, 3, -1).ok());
  EXPECT_FALSE(cuda::DoubleToFloatScaled(nullptr, nullptr, -5, 1.0).ok());
  EXPECT_FALSE(cuda::SumOfSquares(nullptr, nullptr, -1).ok());
  EXPECT_TRUE(cuda::MoeBalanceStats(nullptr, nullptr, nullptr, nullptr, 0, 8, 2).ok());
  EXPECT_TRUE(cuda::AddInPlace(nullptr, nullptr, 0).ok());
  EXPECT_TRUE(cuda::BroadcastRow(nullptr, nullptr, 0, 4).ok());
  EXPECT_TRUE(cuda::DoubleToFloatScaled(nullptr, nullptr, 0, 2.0).ok());
}

}  // namespace
}  // namespace xt
