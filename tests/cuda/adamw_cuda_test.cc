// The CUDA AdamW step against AdamW::Step (optim/adamw.cc), bit for bit: the same scalars
// (MakeAdamWStepScalars), the same float operations in the same order, none fused. Over a few
// steps with changing lr and grad_scale, on a slab of a decay run and a no-decay run, in both of
// torch's lerp branches, with and without weight decay, on awkward gradients (zeros, subnormals,
// overflowing squares). Skipped (label `cuda`) where no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/optim/adamw.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// ((decay run size, no-decay run size), (beta1, beta2, weight_decay))
using Hyper = std::tuple<double, double, double>;
class AdamWCuda : public cudatest::CudaTest<std::tuple<std::pair<int64_t, int64_t>, Hyper>> {};

TEST_P(AdamWCuda, MatchesAdamWStepBitForBit) {
  const auto [sizes, hyper] = GetParam();
  const auto [n1, n2] = sizes;
  const auto [beta1, beta2, wd] = hyper;
  const int64_t n = n1 + n2;
  AdamWConfig cfg;
  cfg.beta1 = beta1;
  cfg.beta2 = beta2;
  cfg.weight_decay = wd;
  cfg.eps = 1e-8;
  auto opt = AdamW::Create(cfg, {{0, n1, true}, {n1, n2, false}}, n);
  ASSERT_TRUE(opt.ok()) << opt.status().message();

  std::mt19937 rng(unsigned(n * 7 + int(beta1 * 100) + int(wd * 1000)));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> params(n);
  for (float& v : params) v = dist(rng);
  DeviceVec<float> gp(params), gm{std::vector<float>(n)}, gv{std::vector<float>(n)};

  const double lrs[] = {1e-3, 3e-4, 0.0, 2e-3, 1e-2};
  const float scales[] = {1.0f, 0.37f, 1.0f, 0.0f, 3.0f};
  for (int s = 0; s < 5; ++s) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    std::vector<float> grads(n);
    for (float& v : grads) v = dist(rng) * (s == 4 ? 1e-3f : 1.0f);
    const float awkward[] = {0.0f, -0.0f, 1e-40f, -3e-39f, 1e20f, -1e-20f, 65504.0f};
    for (int64_t i = 0; i < n && i < int64_t(std::size(awkward)); ++i) grads[i] = awkward[i];
    for (int64_t i = 0; i < n2 && i < int64_t(std::size(awkward)); ++i) grads[n1 + i] = awkward[i];

    opt->Step(params.data(), grads.data(), lrs[s], scales[s]);

    DeviceVec<float> gg(grads);
    const int64_t step = opt->step();
    const AdamWStepScalars decay_run =
        MakeAdamWStepScalars(beta1, beta2, cfg.eps, wd, step, lrs[s], scales[s], true);
    const AdamWStepScalars plain_run =
        MakeAdamWStepScalars(beta1, beta2, cfg.eps, wd, step, lrs[s], scales[s], false);
    ASSERT_TRUE(cuda::AdamWStep(gp.p, gg.p, gm.p, gv.p, n1, decay_run).ok());
    ASSERT_TRUE(cuda::AdamWStep(gp.p + n1, gg.p + n1, gm.p + n1, gv.p + n1, n2, plain_run).ok());
    cudatest::Sync();

    const float* m = opt->exp_avg().f32();
    const float* v = opt->exp_avg_sq().f32();
    cudatest::ExpectBitEqual(gp.Host(), params, "params");
    cudatest::ExpectBitEqual(gm.Host(), std::vector<float>(m, m + n), "exp_avg");
    cudatest::ExpectBitEqual(gv.Host(), std::vector<float>(v, v + n), "exp_avg_sq");
  }
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<AdamWCuda::ParamType>& info) {
  const auto& [sizes, hyper] = info.param;
  const auto& [b1, b2, wd] = hyper;
  return std::to_string(sizes.first) + "_" + std::to_string(sizes.second) + "_b" +
         std::to_string(int(b1 * 10)) + "_wd" + std::to_string(int(wd * 100));
}

// One element in either run, sizes that are not a multiple of 32, more than one of the CPU's
// 16K-element chunks, an empty slab. torch's defaults (lerp's low-weight branch), beta1 = 0.3
// (the other branch), no weight decay.
INSTANTIATE_TEST_SUITE_P(
    Shapes, AdamWCuda,
    ::testing::Combine(
        ::testing::Values(std::pair<int64_t, int64_t>{1, 0}, std::pair<int64_t, int64_t>{0, 1},
                          std::pair<int64_t, int64_t>{7, 33},
                          std::pair<int64_t, int64_t>{1000, 2049},
                          std::pair<int64_t, int64_t>{3 * 16384 + 5, 17},
                          std::pair<int64_t, int64_t>{0, 0}),
        ::testing::Values(Hyper{0.9, 0.999, 0.01}, Hyper{0.3, 0.95, 0.1}, Hyper{0.9, 0.999, 0.0})),
    ParamName);

// The scalars are AdamW::Step's: spot checks of the rounding and the branches.
TEST(AdamWCudaScalars, FormedAsStepFormsThem) {
  const AdamWStepScalars s = MakeAdamWStepScalars(0.9, 0.999, 1e-8, 0.01, 1, 1e-3, 0.5f, true);
  EXPECT_TRUE(s.low_weight);
  EXPECT_EQ(s.w1, float(1 - 0.9));
  EXPECT_EQ(s.one_minus_w1, 1 - float(1 - 0.9));
  EXPECT_EQ(s.decay, float(1 - 1e-5));
  EXPECT_EQ(s.neg_step_size, float(-(1e-3 / (1 - 0.9))));
  EXPECT_EQ(s.grad_scale, 0.5f);
  EXPECT_EQ(MakeAdamWStepScalars(0.9, 0.999, 1e-8, 0.01, 1, 1e-3, 1, false).decay, 1.0f);
  EXPECT_EQ(MakeAdamWStepScalars(0.9, 0.999, 1e-8, 0.0, 1, 1e-3, 1, true).decay, 1.0f);
  EXPECT_FALSE(MakeAdamWStepScalars(0.3, 0.999, 1e-8, 0.0, 1, 1e-3, 1, true).low_weight);
}

}  // namespace
}  // namespace xt
