// The GPU lm_head + cross-entropy (cuda::ChunkedCrossEntropy) against its CPU twin
// (chunked_cross_entropy) on awkward shapes: no tokens, every target ignored, a single loss row,
// ragged rows with 40% ignored, chunk boundaries forced by a small chunk_rows (a ragged last
// chunk), and a real vocabulary (151936). Skipped (label `cuda`) where no GPU is present.
//
// Tolerances. Loss: 1e-6 relative; each row's loss is m + log(sum exp) - z_y from logits that
// differ only by the GEMM's fp32 summation order over H (~1e-7 relative) and by expf vs the CPU's
// polynomial Exp (~2e-7 relative per term, summed in double on both sides). dh and dw:
// 1e-5 relative norm-wise, as the GEMM test: dlogits differ by ~2e-7 relative, and the products
// are fp32 sums in other orders (cuBLAS vs ops::gemm). dh sums K = V terms whose total cancels
// (softmax - onehot sums to 0), so a sequential fp32 chain's rounding grows like eps * sqrt(V)
// relative to |dh|: the bound grows with sqrt(V / 4096) above V = 4096 (6e-5 at V = 151936).
// dw is checked after two calls (dw starts at 0, so 2x the gradient: += at the gradient's scale).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

using cudatest::RandomNormal;
using cudatest::RelErr;

enum class Targets { kRandom, kAllIgnored, kOneRow };

struct Case {
  const char* name;
  int64_t T, H, V;
  Targets targets;
  double ignored;      // fraction of kIgnoreIndex for kRandom
  int64_t chunk_rows;  // 0: the default chunk
};

const Case kCases[] = {
    {"NoTokens", 0, 16, 50, Targets::kRandom, 0.0, 0},
    {"AllIgnored", 6, 16, 50, Targets::kAllIgnored, 0.0, 0},
    {"OneLossRow", 5, 32, 100, Targets::kOneRow, 0.0, 0},
    {"Ragged", 37, 64, 1000, Targets::kRandom, 0.4, 0},
    {"RaggedChunksOf3", 37, 64, 1000, Targets::kRandom, 0.4, 3},
    {"OddSizesChunksOf4", 19, 33, 517, Targets::kRandom, 0.3, 4},
    {"ChunkOfOne", 9, 16, 64, Targets::kRandom, 0.2, 1},
    // bf16: two groups of four 8-row chunks (16-byte aligned chunk rows), the last one short.
    {"GroupsOfChunksOf8", 100, 40, 300, Targets::kRandom, 0.4, 8},
    {"Vocab151936", 8, 64, 151936, Targets::kRandom, 0.0, 0},
    {"Vocab151936ChunksOf3", 8, 64, 151936, Targets::kRandom, 0.25, 3},
};

std::vector<int32_t> MakeTargets(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int32_t> y(c.T, kIgnoreIndex);
  for (int64_t t = 0; t < c.T; ++t) {
    const bool loss = c.targets == Targets::kRandom   ? u(rng) >= c.ignored
                      : c.targets == Targets::kOneRow ? t == c.T / 2
                                                      : false;
    if (loss) y[t] = int32_t(rng() % uint32_t(c.V));
  }
  if (c.targets == Targets::kRandom && c.T > 1) {  // the ends and an extreme class
    y[0] = 0;
    y[c.T - 1] = int32_t(c.V - 1);
  }
  return y;
}

class CrossEntropyCuda : public cudatest::CudaTest<Case> {
 protected:
  void SetUp() override {
    cudatest::CudaTest<Case>::SetUp();
    if (IsSkipped()) return;
    auto b = cuda::Blas::Create();
    ASSERT_TRUE(b.ok()) << b.status().message();
    blas_ = std::move(*b);
  }
  std::unique_ptr<cuda::Blas> blas_;
};

TEST_P(CrossEntropyCuda, MatchesTheCpuTwin) {
  const Case c = GetParam();
  const int64_t T = c.T, H = c.H, V = c.V;
  const auto h = RandomNormal(T * H, 1, 1.0f), w = RandomNormal(V * H, 2, 0.3f);
  const auto y = MakeTargets(c, 3);
  int64_t n = 0;
  for (int32_t t : y) n += t != kIgnoreIndex;
  const double weight = n ? 1.0 / double(n) : 1.0;

  // CPU: two calls (dh assigned, dw +=).
  std::vector<float> dh(T * H), dw(V * H, 0.0f);
  double want[2];
  for (int call = 0; call < 2; ++call)
    want[call] = chunked_cross_entropy(dh.data(), dw.data(), h.data(), w.data(), y.data(), T, H, V,
                                       weight, c.chunk_rows);

  DeviceVec<float> gh(h), gw(w), gdh{std::vector<float>(T * H, 7.0f)},
      gdw{std::vector<float>(V * H, 0.0f)};
  for (int call = 0; call < 2; ++call) {
    auto got = cuda::ChunkedCrossEntropy(*blas_, gdh.p, gdw.p, gh.p, gw.p, y.data(), T, H, V,
                                         weight, c.chunk_rows);
    ASSERT_TRUE(got.ok()) << got.status().message();
    if (n == 0) {
      EXPECT_EQ(*got, 0.0);
    } else {
      EXPECT_NEAR(*got, want[call], 1e-6 * std::abs(want[call])) << "call " << call;
    }
  }
  cudatest::Sync();
  const auto got_dh = gdh.Host(), got_dw = gdw.Host();
  // Rows without a target: exactly 0 (the 7s were overwritten).
  for (int64_t t = 0; t < T; ++t) {
    if (y[t] != kIgnoreIndex) continue;
    for (int64_t j = 0; j < H; ++j) {
      ASSERT_EQ(std::bit_cast<uint32_t>(got_dh[t * H + j]), 0u) << "dh row " << t;
    }
  }
  const double dh_tol = 1e-5 * std::max(1.0, std::sqrt(double(V) / 4096.0));
  EXPECT_LT(RelErr(got_dh, dh), dh_tol);
  EXPECT_LT(RelErr(got_dw, dw), 1e-5);
  if (n == 0) cudatest::ExpectBitEqual(got_dw, dw, "dw without loss rows");
}

// bf16 products against the CPU twin in its bf16 matmul mode (the same rounded operands: rows,
// weight and the logits' gradient; fp32 sums in other orders), with the weight's bf16 copy given
// and made inside. A gradient element rounded to the other side of a bf16 boundary (the two
// sides' fp32 logits differ by ~1e-7) moves one product term by one bf16 ulp (4e-3 relative): rare
// and norm-wise small, so 1e-4 holds with margin.
TEST_P(CrossEntropyCuda, Bf16MatchesTheCpuTwinsBf16Mode) {
  const Case c = GetParam();
  const int64_t T = c.T, H = c.H, V = c.V;
  const auto h = RandomNormal(T * H, 11, 1.0f), w = RandomNormal(V * H, 12, 0.3f);
  const auto y = MakeTargets(c, 13);
  int64_t n = 0;
  for (int32_t t : y) n += t != kIgnoreIndex;
  const double weight = n ? 1.0 / double(n) : 1.0;
  std::vector<float> dh(T * H), dw(V * H, 0.0f);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBf16);
  const double want = chunked_cross_entropy(dh.data(), dw.data(), h.data(), w.data(), y.data(), T,
                                            H, V, weight, c.chunk_rows);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFp32);
  DeviceVec<float> gh(h), gw(w);
  DeviceVec<uint16_t> gw16{std::vector<uint16_t>(std::max<int64_t>(V * H, 1))};
  ASSERT_TRUE(cuda::ToBf16(gw16.p, gw.p, V * H).ok());
  for (const bool given : {true, false}) {
    DeviceVec<float> gdh{std::vector<float>(T * H, 7.0f)}, gdw{std::vector<float>(V * H, 0.0f)};
    auto got = cuda::ChunkedCrossEntropy(*blas_, gdh.p, gdw.p, gh.p, gw.p, y.data(), T, H, V,
                                         weight, c.chunk_rows, nullptr, cuda::GemmInput::kBf16,
                                         given ? gw16.p : nullptr);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_NEAR(*got, want, 1e-5 * std::abs(want) + 1e-12) << "given " << given;
    cudatest::Sync();
    const double dh_tol = 1e-4 * std::max(1.0, std::sqrt(double(V) / 4096.0));
    EXPECT_LT(RelErr(gdh.Host(), dh), dh_tol) << "given " << given;
    EXPECT_LT(RelErr(gdw.Host(), dw), 1e-4) << "given " << given;
  }
}

TEST_P(CrossEntropyCuda, ForwardOnlyLeavesDwAlone) {
  const Case c = GetParam();
  const int64_t T = c.T, H = c.H, V = c.V;
  const auto h = RandomNormal(T * H, 4, 1.0f), w = RandomNormal(V * H, 5, 0.3f),
             dw = RandomNormal(V * H, 6, 1.0f);
  const auto y = MakeTargets(c, 7);
  const double want = chunked_cross_entropy(nullptr, nullptr, h.data(), w.data(), y.data(), T, H, V,
                                            1.0, c.chunk_rows);
  DeviceVec<float> gh(h), gw(w), gdw(dw);
  auto got = cuda::ChunkedCrossEntropy(*blas_, nullptr, gdw.p, gh.p, gw.p, y.data(), T, H, V, 1.0,
                                       c.chunk_rows);
  ASSERT_TRUE(got.ok()) << got.status().message();
  EXPECT_NEAR(*got, want, 1e-6 * std::abs(want));
  cudatest::Sync();
  cudatest::ExpectBitEqual(gdw.Host(), dw, "dw");
}

// dw_beta 0: dw assigned (its NaNs never read), as the same call adds into zeros; zeros when no
// row carries a loss. Both modes, fp32 and bf16 products.
TEST_P(CrossEntropyCuda, AssignedDwMatchesAddingIntoZeros) {
  const Case c = GetParam();
  const int64_t T = c.T, H = c.H, V = c.V;
  const auto h = RandomNormal(T * H, 21, 1.0f), w = RandomNormal(V * H, 22, 0.3f);
  const auto y = MakeTargets(c, 23);
  for (const cuda::GemmInput in : {cuda::GemmInput::kF32, cuda::GemmInput::kBf16}) {
    const char* what = in == cuda::GemmInput::kF32 ? "fp32" : "bf16";
    DeviceVec<float> gh(h), gw(w), gdh{std::vector<float>(T * H)},
        added{std::vector<float>(V * H, 0.0f)}, set{std::vector<float>(V * H, std::nanf(""))};
    for (const float beta : {1.0f, 0.0f}) {
      auto got = cuda::ChunkedCrossEntropy(*blas_, gdh.p, beta == 0.0f ? set.p : added.p, gh.p,
                                           gw.p, y.data(), T, H, V, 0.5, c.chunk_rows, nullptr, in,
                                           nullptr, beta);
      ASSERT_TRUE(got.ok()) << got.status().message();
    }
    cudatest::Sync();
    const std::vector<float> want = added.Host(), got = set.Host();
    for (float v : got) ASSERT_FALSE(std::isnan(v)) << what << ": dw read before written";
    // The same products; cuBLAS may take another algorithm for beta 0 on a GPU.
    EXPECT_LT(RelErr(got, want), 1e-6) << what;
  }
  DeviceVec<float> h1{std::vector<float>(4, 1.0f)}, w1{std::vector<float>(12, 1.0f)},
      dh1{std::vector<float>(4)}, dw1{std::vector<float>(12, 5.0f)};
  const std::vector<int32_t> none = {kIgnoreIndex, kIgnoreIndex};
  EXPECT_FALSE(cuda::ChunkedCrossEntropy(*blas_, dh1.p, dw1.p, h1.p, w1.p, none.data(), 2, 2, 6,
                                         1.0, 0, nullptr, cuda::GemmInput::kF32, nullptr, 0.5f)
                   .ok());  // only 0 and 1
  auto zero = cuda::ChunkedCrossEntropy(*blas_, dh1.p, dw1.p, h1.p, w1.p, none.data(), 2, 2, 6, 1.0,
                                        0, nullptr, cuda::GemmInput::kF32, nullptr, 0.0f);
  ASSERT_TRUE(zero.ok()) << zero.status().message();
  cudatest::Sync();
  for (float v : dw1.Host()) EXPECT_EQ(v, 0.0f) << "no loss row: dw assigned zeros";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropyCuda, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return std::string(info.param.name);
                         });

// Bad targets and arguments: errors naming the position, before anything is queued.
TEST(CrossEntropyCudaArgs, RejectsBadTargets) {
  std::string why;
  if (!cuda::DeviceAvailable(&why)) GTEST_SKIP() << "skipped: no GPU (" << why << ")";
  auto blas = cuda::Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int64_t T = 4, H = 8, V = 10;
  DeviceVec<float> h{std::vector<float>(T * H, 0.5f)}, w{std::vector<float>(V * H, 0.25f)},
      dh{std::vector<float>(T * H)}, dw{std::vector<float>(V * H)};
  for (int32_t bad : {10, -1, -101, 1 << 30}) {
    const std::vector<int32_t> y = {1, kIgnoreIndex, 2, bad};
    auto r = cuda::ChunkedCrossEntropy(**blas, dh.p, dw.p, h.p, w.p, y.data(), T, H, V, 1.0);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("position 3"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(std::to_string(bad)), std::string::npos)
        << r.status().message();
  }
  const std::vector<int32_t> ok = {1, kIgnoreIndex, 2, 9};
  EXPECT_FALSE(
      cuda::ChunkedCrossEntropy(**blas, dh.p, dw.p, h.p, w.p, ok.data(), -1, H, V, 1.0).ok());
  EXPECT_FALSE(cuda::ChunkedCrossEntropy(**blas, dh.p, dw.p, h.p, w.p, nullptr, T, H, V, 1.0).ok());
  EXPECT_TRUE(
      cuda::ChunkedCrossEntropy(**blas, dh.p, dw.p, h.p, w.p, ok.data(), T, H, V, 1.0).ok());
  cudatest::Sync();
}

// A frozen lm_head (dw null, a LoRA run's): the same loss and input gradient, bit for bit, as
// with its gradient, in fp32 and bf16, over several chunks.
TEST(CrossEntropyCudaArgs, AFrozenHeadGivesTheSameLossAndInputGradient) {
  std::string why;
  if (!cuda::DeviceAvailable(&why)) GTEST_SKIP() << "skipped: no GPU (" << why << ")";
  auto blas = cuda::Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int64_t T = 37, H = 24, V = 50;
  std::vector<int32_t> y(T);
  for (int64_t t = 0; t < T; ++t) y[t] = t % 5 == 0 ? kIgnoreIndex : int32_t((t * 7) % V);
  DeviceVec<float> h{cudatest::RandomNormal(T * H, 3)}, w{cudatest::RandomNormal(V * H, 4, 0.2f)};
  for (cuda::GemmInput in : {cuda::GemmInput::kF32, cuda::GemmInput::kBf16}) {
    DeviceVec<float> dh_a{std::vector<float>(T * H)}, dh_b{std::vector<float>(T * H)},
        dw{std::vector<float>(V * H)};
    auto with = cuda::ChunkedCrossEntropy(**blas, dh_a.p, dw.p, h.p, w.p, y.data(), T, H, V, 0.1, 8,
                                          nullptr, in);
    auto frozen = cuda::ChunkedCrossEntropy(**blas, dh_b.p, nullptr, h.p, w.p, y.data(), T, H, V,
                                            0.1, 8, nullptr, in);
    ASSERT_TRUE(with.ok() && frozen.ok());
    EXPECT_EQ(*with, *frozen);
    cudatest::Sync();
    cudatest::ExpectBitEqual(dh_b.Host(), dh_a.Host(), "dh of a frozen head");
    EXPECT_GT(cudatest::RelErr(dh_a.Host(), std::vector<float>(T * H)), 0);
  }
}

}  // namespace
}  // namespace xt
