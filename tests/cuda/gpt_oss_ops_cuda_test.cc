// GPT-OSS's ops on the GPU against their CPU twins: the clamped GLU (cuda::GptOssGluForward /
// Backward against ops::gpt_oss_glu_forward / backward) and the bias rows (cuda::BiasForward /
// BiasBackward and the per-expert forms against ops::bias_* and grouped_bias_*). Skipped (label
// `cuda`) where no GPU is present, except the argument checks (no device needed).
//
// The GLU: not bit for bit (the CPU's exp is a polynomial, the GPU's exp in double rounded, as
// for SwiGLU, swiglu_cuda_test.cc): 1e-6 relative to the magnitude of the terms, with inputs at
// and beyond the clamp limit (where the gradient is zero), at the exp saturation, and NaN (which
// passes through as on the CPU). The bias rows: bit for bit up to 1024 rows (one add per element;
// the rows of a column added in the CPU's order); beyond, the backward sums chunks of rows, so
// 1e-6 relative to the sum of the terms' magnitudes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/core/dtype.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

constexpr float kAlpha = 1.702f, kLimit = 7.0f;

// (N, I)
class GptOssGluCuda : public cudatest::CudaTest<std::pair<int64_t, int64_t>> {};

// Inputs at and around the clamp (+-7), far beyond it, zero, and past exp's saturation.
const float kAwkward[] = {-100.0f, -60.0f, -7.0001f, -7.0f, -6.9999f, -0.0f, 0.0f,
                          6.9999f, 7.0f,   7.0001f,  60.0f, 100.0f,   -1.0f, 1e-30f};

TEST_P(GptOssGluCuda, MatchesTheCpuTwin) {
  const auto [N, I] = GetParam();
  std::mt19937 rng(unsigned(N * 131 + I));
  std::normal_distribution<float> dist(0.0f, 5.0f);
  std::vector<float> h(N * 2 * I), dout(N * I);
  for (float& v : h) v = dist(rng);
  for (float& v : dout) v = dist(rng);
  for (int64_t n = 0; n < N; ++n)  // the first gates and ups of every row: the awkward values
    for (int64_t i = 0; i < I && i < int64_t(std::size(kAwkward)); ++i) {
      h[n * 2 * I + i] = kAwkward[i];
      h[n * 2 * I + I + i] = kAwkward[std::size(kAwkward) - 1 - i];
    }
  std::vector<float> out(N * I), dh(N * 2 * I);
  ops::gpt_oss_glu_forward(out.data(), h.data(), N, I, kAlpha, kLimit);
  ops::gpt_oss_glu_backward(dh.data(), dout.data(), h.data(), N, I, kAlpha, kLimit);

  DeviceVec<float> gh(h), gdout(dout), gout{std::vector<float>(N * I, NAN)},
      gdh{std::vector<float>(N * 2 * I, NAN)};
  ASSERT_TRUE(cuda::GptOssGluForward(gout.p, gh.p, N, I, kAlpha, kLimit).ok());
  ASSERT_TRUE(cuda::GptOssGluBackward(gdh.p, gdout.p, gh.p, N, I, kAlpha, kLimit).ok());
  cudatest::Sync();
  // The scale of each gradient element: its terms' magnitudes (1 + alpha g (1 - s) crosses 0).
  std::vector<double> dh_scale(N * 2 * I);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < I; ++i) {
      const double g = std::min(h[n * 2 * I + i], kLimit);
      const double u = std::clamp(h[n * 2 * I + I + i], -kLimit, kLimit), dy = dout[n * I + i];
      const double s = 1.0 / (1.0 + std::exp(std::min(-kAlpha * g, 88.0)));
      dh_scale[n * 2 * I + i] =
          std::abs(dy * (u + 1) * s) * (1.0 + std::abs(kAlpha * g) + std::abs(kAlpha * g * s));
      dh_scale[n * 2 * I + I + i] = std::abs(dy * g * s);
    }
  const std::vector<float> got_dh = gdh.Host();
  cudatest::ExpectNearRel(gout.Host(), out, 1e-6, "out");
  cudatest::ExpectNearScaled(got_dh, dh, dh_scale, 1e-6, "dh");
  for (size_t i = 0; i < dh.size(); ++i) {  // the clamp's zeros exactly
    if (dh[i] == 0.0f) {
      ASSERT_EQ(got_dh[i], 0.0f) << "dh element " << i;
    }
  }

  // bf16: the output rounded, the input kept rounded, the backward from it.
  DeviceVec<uint16_t> gout16{std::vector<uint16_t>(N * I)}, gh16{std::vector<uint16_t>(N * 2 * I)},
      gdh16{std::vector<uint16_t>(N * 2 * I)};
  ASSERT_TRUE(cuda::GptOssGluForward(gout16.p, gh16.p, gh.p, N, I, kAlpha, kLimit).ok());
  cudatest::Sync();
  cudatest::ExpectRoundedBitForBit(gout16.Host(), gout.Host(), "out bf16");
  const std::vector<uint16_t> h16 = gh16.Host();
  cudatest::ExpectRoundedBitForBit(h16, h, "h bf16");
  std::vector<float> rounded(h16.size());
  for (size_t i = 0; i < h16.size(); ++i) rounded[i] = Bf16ToF32(h16[i]);
  DeviceVec<float> grounded(rounded), gwant{std::vector<float>(N * 2 * I)};
  ASSERT_TRUE(cuda::GptOssGluBackward(gwant.p, gdout.p, grounded.p, N, I, kAlpha, kLimit).ok());
  ASSERT_TRUE(cuda::GptOssGluBackward(gdh16.p, gdout.p, gh16.p, N, I, kAlpha, kLimit).ok());
  cudatest::Sync();
  cudatest::ExpectRoundedBitForBit(gdh16.Host(), gwant.Host(), "dh bf16 from the bf16 input");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GptOssGluCuda,
    ::testing::Values(std::pair<int64_t, int64_t>{1, 1}, std::pair<int64_t, int64_t>{3, 14},
                      std::pair<int64_t, int64_t>{17, 257}, std::pair<int64_t, int64_t>{0, 64},
                      std::pair<int64_t, int64_t>{5, 0}),
    [](const ::testing::TestParamInfo<GptOssGluCuda::ParamType>& info) {
      return std::to_string(info.param.first) + "x" + std::to_string(info.param.second);
    });

// A NaN gate or up gives what the CPU gives (NaN where it propagates, the clamp's zeros where
// the CPU's comparisons say so), not a value clamped to the limit.
class GptOssGluNaNCuda : public cudatest::CudaTest<int> {};

TEST_P(GptOssGluNaNCuda, PassesThroughAsOnTheCpu) {
  const int64_t N = 2, I = 1;
  const std::vector<float> h{NAN, 1.5f, 1.5f, NAN}, dout{2.0f, 3.0f};  // rows [gate | up]
  std::vector<float> out(N * I), dh(N * 2 * I);
  ops::gpt_oss_glu_forward(out.data(), h.data(), N, I, kAlpha, kLimit);
  ops::gpt_oss_glu_backward(dh.data(), dout.data(), h.data(), N, I, kAlpha, kLimit);
  DeviceVec<float> gh(h), gdout(dout), gout{std::vector<float>(N * I)},
      gdh{std::vector<float>(N * 2 * I)};
  ASSERT_TRUE(cuda::GptOssGluForward(gout.p, gh.p, N, I, kAlpha, kLimit).ok());
  ASSERT_TRUE(cuda::GptOssGluBackward(gdh.p, gdout.p, gh.p, N, I, kAlpha, kLimit).ok());
  cudatest::Sync();
  const std::vector<float> got = gout.Host(), got_dh = gdh.Host();
  for (int64_t i = 0; i < N * I; ++i) {
    EXPECT_TRUE(std::isnan(out[i])) << "the CPU's output " << i;
    EXPECT_TRUE(std::isnan(got[i])) << "output " << i << ": " << got[i];
  }
  for (int64_t i = 0; i < N * 2 * I; ++i) {
    EXPECT_EQ(std::isnan(got_dh[i]), std::isnan(dh[i])) << "dh " << i << ": " << got_dh[i];
    if (!std::isnan(dh[i])) {
      EXPECT_EQ(got_dh[i], dh[i]) << "dh " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Once, GptOssGluNaNCuda, ::testing::Values(0));

// (rows N, columns O)
class BiasCuda : public cudatest::CudaTest<std::pair<int64_t, int64_t>> {};

// db's tolerance past 1024 rows: the terms' magnitudes (db's own and every row's).
void ExpectBiasGrad(const std::vector<float>& got, const std::vector<float>& want,
                    const std::vector<float>& db0, const std::vector<float>& dout,
                    const std::vector<int32_t>& offsets, int64_t O, const char* what) {
  const int64_t E = int64_t(offsets.size()) - 1;
  int64_t most = 0;  // the most rows of an expert
  for (int64_t e = 0; e < E; ++e) most = std::max<int64_t>(most, offsets[e + 1] - offsets[e]);
  if (most <= 1024) return cudatest::ExpectBitEqual(got, want, what);
  std::vector<double> scale(want.size());
  for (int64_t e = 0; e < E; ++e)
    for (int64_t o = 0; o < O; ++o) {
      double s = std::abs(double(db0[e * O + o]));
      for (int64_t n = offsets[e]; n < offsets[e + 1]; ++n) s += std::abs(double(dout[n * O + o]));
      scale[e * O + o] = s;
    }
  cudatest::ExpectNearScaled(got, want, scale, 1e-6, what);
}

TEST_P(BiasCuda, MatchesTheCpu) {
  const auto [N, O] = GetParam();
  const std::vector<float> b = cudatest::RandomNormal(O, unsigned(O + 1)),
                           x = cudatest::RandomNormal(N * O, unsigned(N * 3 + O), 10.0f);
  std::vector<float> out = x, db = cudatest::RandomNormal(O, 7);  // both added to
  const std::vector<float> db0 = db;
  DeviceVec<float> gb(b), gx(x), gout(out), gdb(db);
  ops::bias_forward(out.data(), b.data(), N, O);
  ops::bias_backward(db.data(), x.data(), N, O);
  ASSERT_TRUE(cuda::BiasForward(gout.p, gb.p, N, O).ok());
  ASSERT_TRUE(cuda::BiasBackward(gdb.p, gx.p, N, O).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout.Host(), out, "bias_forward");
  ExpectBiasGrad(gdb.Host(), db, db0, x, {0, int32_t(N)}, O, "bias_backward");

  // Per expert: an empty expert, one with a single row, and the rest of the rows.
  const int64_t E = 4, one = std::min<int64_t>(1, N), half = std::max(one, N / 2);
  const std::vector<int32_t> offsets{0, 0, int32_t(one), int32_t(half), int32_t(N)};
  const std::vector<float> be = cudatest::RandomNormal(E * O, 11);
  std::vector<float> gout_cpu = x, gdb_cpu = cudatest::RandomNormal(E * O, 13);
  const std::vector<float> gdb0 = gdb_cpu;
  DeviceVec<float> gbe(be), gout_e(gout_cpu), gdb_e(gdb_cpu);
  ops::grouped_bias_forward(gout_cpu.data(), be.data(), offsets.data(), E, O);
  ops::grouped_bias_backward(gdb_cpu.data(), x.data(), offsets.data(), E, O);
  ASSERT_TRUE(cuda::GroupedBiasForward(gout_e.p, gbe.p, offsets.data(), E, O).ok());
  ASSERT_TRUE(cuda::GroupedBiasBackward(gdb_e.p, gx.p, offsets.data(), E, O).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout_e.Host(), gout_cpu, "grouped_bias_forward");
  ExpectBiasGrad(gdb_e.Host(), gdb_cpu, gdb0, x, offsets, O, "grouped_bias_backward");
  // One launch for every expert gives what one BiasForward / BiasBackward per expert gives, bit
  // for bit (past 1024 rows too: the same chunks, summed in the same order).
  const std::vector<float> x0 = x;
  DeviceVec<float> each_out(x0), each_db(gdb0);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    ASSERT_TRUE(cuda::BiasForward(each_out.p + r0 * O, gbe.p + e * O, rows, O).ok());
    ASSERT_TRUE(cuda::BiasBackward(each_db.p + e * O, gx.p + r0 * O, rows, O).ok());
  }
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout_e.Host(), each_out.Host(), "grouped_bias_forward, per expert");
  cudatest::ExpectBitEqual(gdb_e.Host(), each_db.Host(), "grouped_bias_backward, per expert");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, BiasCuda,
    ::testing::Values(std::pair<int64_t, int64_t>{1, 1}, std::pair<int64_t, int64_t>{7, 33},
                      std::pair<int64_t, int64_t>{300, 257}, std::pair<int64_t, int64_t>{0, 16},
                      std::pair<int64_t, int64_t>{1024, 3}, std::pair<int64_t, int64_t>{2000, 5},
                      std::pair<int64_t, int64_t>{5000, 40}),
    [](const ::testing::TestParamInfo<BiasCuda::ParamType>& info) {
      return std::to_string(info.param.first) + "x" + std::to_string(info.param.second);
    });

TEST(GptOssOpsCudaArguments, BadOffsetsAndSizesAreErrors) {
  const std::vector<int32_t> down{0, 3, 2}, late{1, 2, 3};
  Status st = cuda::GroupedBiasForward(nullptr, nullptr, down.data(), 2, 4);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("offsets decrease at expert 1"), std::string::npos) << st.message();
  st = cuda::GroupedBiasBackward(nullptr, nullptr, late.data(), 2, 4);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("offsets must start at 0"), std::string::npos) << st.message();
  EXPECT_FALSE(cuda::GroupedBiasForward(nullptr, nullptr, nullptr, 2, 4).ok());
  EXPECT_FALSE(cuda::BiasForward(nullptr, nullptr, -1, 4).ok());
  EXPECT_FALSE(
      cuda::GptOssGluForward(static_cast<float*>(nullptr), nullptr, 2, -1, kAlpha, kLimit).ok());
}

}  // namespace
}  // namespace xt
