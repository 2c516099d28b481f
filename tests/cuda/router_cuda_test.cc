// CUDA MoE router forward and backward against their CPU twins (ops::router_forward/backward,
// and DeepSeek-V3's router_sigmoid_forward/backward) on random and awkward shapes, with and
// without renormalisation, with and without dprobs.
// Skipped (label `cuda`) where no GPU is present, except the argument checks (no device needed).
//
// Logits are multiples of 0.25, so probabilities either tie exactly (the lower index must come
// first) or differ by a factor >= exp(0.25): the top-k sets must match exactly even though the
// GPU's exp is not glibc's. Rows with NaN, +inf and -inf logits follow the CPU (NaN rows). The
// softmax and the backward's sums are reductions: 1e-5 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// ((T, E, k), norm_topk)
class RouterCuda
    : public cudatest::CudaTest<std::tuple<std::tuple<int64_t, int64_t, int64_t>, bool>> {};

TEST_P(RouterCuda, MatchesTheCpuTwin) {
  const auto [shape, norm] = GetParam();
  const auto [T, E, k] = shape;
  std::mt19937 rng(unsigned(T * 1009 + E * 101 + k * 11 + norm));
  std::uniform_int_distribution<int> level(-16, 16);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> logits(T * E);
  for (float& z : logits) z = 0.25f * float(level(rng));
  if (T > 3 && E > 1) {
    logits[1 * E + E - 1] = std::numeric_limits<float>::quiet_NaN();  // all-NaN row
    logits[2 * E + E / 2] = std::numeric_limits<float>::infinity();   // all-NaN row too
    logits[3 * E + 0] = -std::numeric_limits<float>::infinity();      // probability 0
  }
  std::vector<int32_t> idx(T * k);
  std::vector<float> w(T * k), probs(T * E);
  ops::router_forward(idx.data(), w.data(), probs.data(), logits.data(), T, E, k, norm);

  DeviceVec<float> glogits(logits), gprobs{std::vector<float>(T * E)},
      gw{std::vector<float>(T * k)};
  DeviceVec<int32_t> gidx{std::vector<int32_t>(T * k)};
  ASSERT_TRUE(cuda::RouterForward(gidx.p, gw.p, gprobs.p, glogits.p, T, E, k, norm).ok());
  cudatest::Sync();
  EXPECT_EQ(gidx.Host(), idx);
  cudatest::ExpectNearRel(gprobs.Host(), probs, 1e-5, "probs");
  cudatest::ExpectNearRel(gw.Host(), w, 1e-5, "topk_w");

  // Backward from the CPU's forward results, with and without a gradient on the probabilities.
  std::vector<float> dtopk_w(T * k), dprobs(T * E);
  for (float& v : dtopk_w) v = dist(rng);
  for (float& v : dprobs) v = dist(rng);
  DeviceVec<float> cprobs(probs), gdtopk(dtopk_w), gdprobs(dprobs);
  DeviceVec<int32_t> cidx(idx);
  for (const bool with_dprobs : {false, true}) {
    SCOPED_TRACE(with_dprobs ? "with dprobs" : "without dprobs");
    std::vector<float> dlogits(T * E);
    ops::router_backward(dlogits.data(), dtopk_w.data(), with_dprobs ? dprobs.data() : nullptr,
                         probs.data(), idx.data(), T, E, k, norm);
    DeviceVec<float> gdlogits{std::vector<float>(T * E, 7.0f)};
    ASSERT_TRUE(cuda::RouterBackward(gdlogits.p, gdtopk.p, with_dprobs ? gdprobs.p : nullptr,
                                     cprobs.p, cidx.p, T, E, k, norm)
                    .ok());
    cudatest::Sync();
    // Scale: |p_e| (|dp_e| + sum |p dp|), dp = dL/dprobs, bounded by |dprobs| + the top-k terms.
    std::vector<double> scale(T * E);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> dp(E, 0.0);
      double s = 0, gsum = 0;
      for (int64_t j = 0; j < k; ++j) s += probs[t * E + idx[t * k + j]];
      for (int64_t j = 0; j < k; ++j) gsum += std::abs(dtopk_w[t * k + j]);
      for (int64_t e = 0; e < E; ++e) dp[e] = with_dprobs ? std::abs(dprobs[t * E + e]) : 0.0;
      for (int64_t j = 0; j < k; ++j)
        dp[idx[t * k + j]] +=
            norm ? (std::abs(dtopk_w[t * k + j]) + gsum) / s : std::abs(dtopk_w[t * k + j]);
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += std::abs(probs[t * E + e]) * dp[e];
      for (int64_t e = 0; e < E; ++e) scale[t * E + e] = std::abs(probs[t * E + e]) * (dp[e] + dot);
    }
    cudatest::ExpectNearScaled(gdlogits.Host(), dlogits, scale, 1e-5, "dlogits");
  }
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<RouterCuda::ParamType>& info) {
  const auto& [shape, norm] = info.param;
  const auto& [T, E, k] = shape;
  return std::to_string(T) + "x" + std::to_string(E) + "x" + std::to_string(k) +
         (norm ? "_norm" : "_raw");
}

// k = 1, k = E, E not a multiple of 32, a model-sized router (128 experts, top 8), no tokens.
INSTANTIATE_TEST_SUITE_P(
    Shapes, RouterCuda,
    ::testing::Combine(::testing::Values(std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                                         std::tuple<int64_t, int64_t, int64_t>{3, 4, 2},
                                         std::tuple<int64_t, int64_t, int64_t>{17, 8, 2},
                                         std::tuple<int64_t, int64_t, int64_t>{33, 60, 60},
                                         std::tuple<int64_t, int64_t, int64_t>{100, 64, 8},
                                         std::tuple<int64_t, int64_t, int64_t>{257, 128, 8},
                                         std::tuple<int64_t, int64_t, int64_t>{5, 257, 3},
                                         std::tuple<int64_t, int64_t, int64_t>{0, 8, 2}),
                       ::testing::Bool()),
    ParamName);

// DeepSeek-V3's router: ((T, E, k, n_group, topk_group), norm_topk). Logits are multiples of 0.25
// and the bias multiples of 1/64; on these 33 logit levels the device's exp (double, rounded)
// and glibc's expf give the same sigmoids, so the choice scores and group sums are the same
// floats on both sides (ties resolved to the lower index alike): the choices must match exactly.
// (On arbitrary logits the two exps differ in rare last bits, and a near-tie can then differ.)
using SigmoidShape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
class RouterSigmoidCuda : public cudatest::CudaTest<std::tuple<SigmoidShape, bool>> {};

TEST_P(RouterSigmoidCuda, MatchesTheCpuTwin) {
  const auto [shape, norm] = GetParam();
  const auto [T, E, k, G, TG] = shape;
  std::mt19937 rng(unsigned(T * 1009 + E * 101 + k * 11 + G + norm));
  std::uniform_int_distribution<int> level(-16, 16);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> logits(T * E), bias(E);
  for (float& z : logits) z = 0.25f * float(level(rng));
  for (float& b : bias) b = float(level(rng)) / 64.0f;
  const float scale = 2.5f;
  std::vector<int32_t> idx(T * k);
  std::vector<float> w(T * k), scores(T * E);
  ops::router_sigmoid_forward(idx.data(), w.data(), scores.data(), logits.data(), bias.data(), T, E,
                              k, G, TG, norm, scale);
  DeviceVec<float> glogits(logits), gbias(bias), gscores{std::vector<float>(T * E)},
      gw{std::vector<float>(T * k)};
  DeviceVec<int32_t> gidx{std::vector<int32_t>(T * k)};
  ASSERT_TRUE(cuda::RouterSigmoidForward(gidx.p, gw.p, gscores.p, glogits.p, gbias.p, T, E, k, G,
                                         TG, norm, scale)
                  .ok());
  cudatest::Sync();
  EXPECT_EQ(gidx.Host(), idx);
  cudatest::ExpectNearRel(gscores.Host(), scores, 1e-6, "scores");
  cudatest::ExpectNearRel(gw.Host(), w, 1e-6, "topk_w");

  std::vector<float> dtopk_w(T * k), dlogits(T * E);
  for (float& v : dtopk_w) v = dist(rng);
  ops::router_sigmoid_backward(dlogits.data(), dtopk_w.data(), scores.data(), idx.data(), T, E, k,
                               norm, scale);
  DeviceVec<float> cscores(scores), gdtopk(dtopk_w), gdlogits{std::vector<float>(T * E, 7.0f)};
  DeviceVec<int32_t> cidx(idx);
  ASSERT_TRUE(
      cuda::RouterSigmoidBackward(gdlogits.p, gdtopk.p, cscores.p, cidx.p, T, E, k, norm, scale)
          .ok());
  cudatest::Sync();
  // The same double sums in the same order from the same inputs: the same bits.
  EXPECT_EQ(gdlogits.Host(), dlogits);
}

std::string SigmoidName(const ::testing::TestParamInfo<RouterSigmoidCuda::ParamType>& info) {
  const auto& [shape, norm] = info.param;
  const auto& [T, E, k, G, TG] = shape;
  return std::to_string(T) + "x" + std::to_string(E) + "x" + std::to_string(k) + "_g" +
         std::to_string(G) + "k" + std::to_string(TG) + (norm ? "_norm" : "_raw");
}

// One group (a plain top-k), groups of 2, every expert chosen, DeepSeek-V3's 256 experts in 8
// groups keeping 4 with top-8, no tokens.
INSTANTIATE_TEST_SUITE_P(
    Shapes, RouterSigmoidCuda,
    ::testing::Combine(::testing::Values(SigmoidShape{5, 6, 2, 1, 1}, SigmoidShape{17, 8, 2, 4, 1},
                                         SigmoidShape{9, 6, 6, 3, 3}, SigmoidShape{33, 64, 8, 8, 4},
                                         SigmoidShape{65, 256, 8, 8, 4},
                                         SigmoidShape{0, 8, 2, 2, 1}),
                       ::testing::Bool()),
    SigmoidName);

// Bad arguments are errors, found before anything touches the device.
TEST(RouterCudaArgs, RejectsBadSizes) {
  EXPECT_FALSE(cuda::RouterForward(nullptr, nullptr, nullptr, nullptr, 4, 8, 9, false).ok());
  EXPECT_FALSE(cuda::RouterForward(nullptr, nullptr, nullptr, nullptr, 4, 8, 0, false).ok());
  EXPECT_FALSE(cuda::RouterForward(nullptr, nullptr, nullptr, nullptr, -1, 8, 2, false).ok());
  EXPECT_FALSE(
      cuda::RouterBackward(nullptr, nullptr, nullptr, nullptr, nullptr, 4, -8, 2, true).ok());
  EXPECT_TRUE(cuda::RouterForward(nullptr, nullptr, nullptr, nullptr, 0, 8, 2, false).ok());
  // Groups of one expert, more groups kept than there are, k beyond the kept groups' experts.
  for (auto [E, k, G, TG] :
       {std::tuple{8, 2, 8, 1}, std::tuple{8, 2, 2, 3}, std::tuple{8, 5, 2, 1}})
    EXPECT_FALSE(cuda::RouterSigmoidForward(nullptr, nullptr, nullptr, nullptr, nullptr, 4, E, k, G,
                                            TG, true, 1.0f)
                     .ok());
}

}  // namespace
}  // namespace xt
