// The CUDA AdamW step against AdamW::Step (optim/adamw.cc), bit for bit: the same scalars
// (MakeAdamWStepScalars), the same float operations in the same order, none fused. Over a few
// steps with changing lr and grad_scale, on a slab of a decay run and a no-decay run, in both of
// torch's lerp branches, with and without weight decay, on awkward gradients (zeros, subnormals,
// overflowing squares). Skipped (label `cuda`) where no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/core/dtype.h"
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

// AdamWStepRange over a slab with a bf16 mirror of part of it: the slab's new values are
// AdamWStep's, bit for bit, run by run; the mirror holds their bf16 rounding (nearest even, as
// ToBf16 and the CPU's F32ToBf16) exactly where it covers the ranges, and nothing else is
// written. Mirrors that start inside a run, end inside one, cover everything, nothing, or lie
// outside the ranges; a bad range is an error.
class AdamWRangeCuda : public cudatest::CudaTest<std::pair<int64_t, int64_t>> {};

TEST_P(AdamWRangeCuda, WritesTheMirrorWhereItCoversTheRange) {
  const auto [mb, me] = GetParam();  // the mirror's [begin, end) in the slab
  const int64_t n = 3000;
  const int64_t runs[][2] = {{0, 700}, {700, 701}, {701, 2222}, {2222, 3000}};
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> p0(n), g(n), m0(n), v0(n);
  for (int64_t i = 0; i < n; ++i) {
    p0[i] = dist(rng);
    g[i] = dist(rng);
    m0[i] = 0.1f * dist(rng);
    v0[i] = 0.01f * std::abs(dist(rng));
  }
  const AdamWStepScalars s = MakeAdamWStepScalars(0.9, 0.999, 1e-8, 0.01, 3, 1e-2, 1.0f, true);
  // Reference: AdamWStep run by run, no mirror.
  DeviceVec<float> rp(p0), rg(g), rm(m0), rv(v0);
  for (const auto& r : runs)
    ASSERT_TRUE(
        cuda::AdamWStep(rp.p + r[0], rg.p + r[0], rm.p + r[0], rv.p + r[0], r[1] - r[0], s).ok());
  // With the mirror: its elements start as a sentinel (0xAAAA) to see what was written.
  DeviceVec<float> gp(p0), gg(g), gm(m0), gv(v0);
  const int64_t mn = std::max<int64_t>(me - mb, 1);
  DeviceVec<uint16_t> mirror{std::vector<uint16_t>(mn, 0xAAAA)};
  const cuda::Bf16Mirror mir{mirror.p, mb, me};
  for (const auto& r : runs)
    ASSERT_TRUE(
        cuda::AdamWStepRange(gp.p, gg.p + r[0], gm.p + r[0], gv.p + r[0], r[0], r[1], s, mir).ok());
  cudatest::Sync();
  const std::vector<float> want = rp.Host();
  cudatest::ExpectBitEqual(gp.Host(), want, "params");
  cudatest::ExpectBitEqual(gm.Host(), rm.Host(), "exp_avg");
  cudatest::ExpectBitEqual(gv.Host(), rv.Host(), "exp_avg_sq");
  const std::vector<uint16_t> got = mirror.Host();
  for (int64_t i = mb; i < me; ++i) {
    const uint16_t expect = i < n ? F32ToBf16(want[i]) : uint16_t(0xAAAA);  // past the slab
    ASSERT_EQ(got[i - mb], expect) << "mirror element " << i;
  }
  // A range the slab does not have is refused before any launch.
  EXPECT_FALSE(cuda::AdamWStepRange(gp.p, gg.p, gm.p, gv.p, 10, 5, s, mir).ok());
  EXPECT_FALSE(cuda::AdamWStepRange(gp.p, gg.p, gm.p, gv.p, -1, 5, s, mir).ok());
}

INSTANTIATE_TEST_SUITE_P(Mirrors, AdamWRangeCuda,
                         ::testing::Values(std::pair<int64_t, int64_t>{350, 3000},   // in a run
                                           std::pair<int64_t, int64_t>{0, 2500},     // to inside
                                           std::pair<int64_t, int64_t>{0, 3000},     // all
                                           std::pair<int64_t, int64_t>{700, 701},    // one
                                           std::pair<int64_t, int64_t>{3000, 3100},  // past
                                           std::pair<int64_t, int64_t>{1000, 1000}   // empty
                                           ));

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
