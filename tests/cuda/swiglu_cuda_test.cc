// CUDA SwiGLU forward and backward against their CPU twins (ops::swiglu_forward/backward) on
// random and awkward shapes and values. Skipped (label `cuda`) where no GPU is present.
//
// Not bit for bit: the CPU's exp is a polynomial (ops/cpu/fast_exp.h, ~2e-7 relative, with or
// without fused multiply-adds as the compiler chooses), the GPU's is exp in double rounded to
// float; both saturate at exp(88). So 1e-6 relative, to the magnitude of the terms where they
// cancel (1 + g (1 - sig) crosses zero near g = -1.28).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

class SwigluCuda : public cudatest::CudaTest<std::pair<int64_t, int64_t>> {};

// Gates across the saturation limits of exp, zero, and the zero of silu's derivative.
const float kAwkwardGates[] = {-100.0f, -88.5f, -87.2f, -20.0f, -1.2785f, -0.0f,
                               0.0f,    1e-30f, 16.6f,  17.0f,  88.5f,    100.0f};

TEST_P(SwigluCuda, MatchesTheCpuTwin) {
  const auto [N, I] = GetParam();
  std::mt19937 rng(unsigned(N * 131 + I));
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> h(N * 2 * I), dout(N * I);
  for (float& v : h) v = dist(rng);
  for (float& v : dout) v = dist(rng);
  // The first gates of every row (as many as fit) take the awkward values.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < I && i < int64_t(std::size(kAwkwardGates)); ++i)
      h[n * 2 * I + i] = kAwkwardGates[i];

  std::vector<float> out(N * I), dh(N * 2 * I);
  ops::swiglu_forward(out.data(), h.data(), N, I);
  ops::swiglu_backward(dh.data(), dout.data(), h.data(), N, I);

  DeviceVec<float> gh(h), gdout(dout), gout{std::vector<float>(N * I)},
      gdh{std::vector<float>(N * 2 * I)};
  ASSERT_TRUE(cuda::SwigluForward(gout.p, gh.p, N, I).ok());
  ASSERT_TRUE(cuda::SwigluBackward(gdh.p, gdout.p, gh.p, N, I).ok());
  cudatest::Sync();

  std::vector<double> dh_scale(N * 2 * I);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < I; ++i) {
      const double g = h[n * 2 * I + i], u = h[n * 2 * I + I + i], dy = dout[n * I + i];
      const double sig = 1.0 / (1.0 + std::exp(std::min(-g, 88.0)));  // exp saturates at 88
      const double b = 1.0 + g * (1.0 - sig);
      dh_scale[n * 2 * I + i] = std::abs(dy * u * sig) * (std::abs(b) + 1.0 + std::abs(g));
      dh_scale[n * 2 * I + I + i] = std::abs(dy * g * sig);
    }
  }
  cudatest::ExpectNearRel(gout.Host(), out, 1e-6, "out");
  cudatest::ExpectNearScaled(gdh.Host(), dh, dh_scale, 1e-6, "dh");

  // The bf16 outputs (bf16 mode): the fp32 outputs rounded to nearest even, bit for bit.
  DeviceVec<uint16_t> gout16{std::vector<uint16_t>(N * I)}, gdh16{std::vector<uint16_t>(N * 2 * I)};
  ASSERT_TRUE(cuda::SwigluForward(gout16.p, gh.p, N, I).ok());
  ASSERT_TRUE(cuda::SwigluBackward(gdh16.p, gdout.p, gh.p, N, I).ok());
  cudatest::Sync();
  cudatest::ExpectRoundedBitForBit(gout16.Host(), gout.Host(), "out bf16");
  cudatest::ExpectRoundedBitForBit(gdh16.Host(), gdh.Host(), "dh bf16");

  // The input kept for the backward in bf16: the forward writes h rounded beside the same
  // output, and the backward from it equals the fp32 backward at the rounded values.
  DeviceVec<uint16_t> gh16{std::vector<uint16_t>(N * 2 * I)}, gout16b{std::vector<uint16_t>(N * I)};
  ASSERT_TRUE(cuda::SwigluForward(gout16b.p, gh16.p, gh.p, N, I).ok());
  cudatest::Sync();
  const std::vector<uint16_t> h16 = gh16.Host();
  cudatest::ExpectRoundedBitForBit(h16, h, "h bf16");
  EXPECT_EQ(gout16b.Host(), gout16.Host());
  std::vector<float> rounded(h16.size());
  for (size_t i = 0; i < h16.size(); ++i) rounded[i] = Bf16ToF32(h16[i]);
  DeviceVec<float> grounded(rounded);
  DeviceVec<uint16_t> want16{std::vector<uint16_t>(N * 2 * I)},
      got16{std::vector<uint16_t>(N * 2 * I)};
  ASSERT_TRUE(cuda::SwigluBackward(want16.p, gdout.p, grounded.p, N, I).ok());
  ASSERT_TRUE(cuda::SwigluBackward(got16.p, gdout.p, gh16.p, N, I).ok());
  cudatest::Sync();
  EXPECT_EQ(got16.Host(), want16.Host()) << "dh from the bf16 input";
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<SwigluCuda::ParamType>& info) {
  return std::to_string(info.param.first) + "x" + std::to_string(info.param.second);
}

// One element, sizes that are not a multiple of 32, a model-sized row, no rows, empty rows.
INSTANTIATE_TEST_SUITE_P(
    Shapes, SwigluCuda,
    ::testing::Values(std::pair<int64_t, int64_t>{1, 1}, std::pair<int64_t, int64_t>{3, 7},
                      std::pair<int64_t, int64_t>{2, 33}, std::pair<int64_t, int64_t>{17, 257},
                      std::pair<int64_t, int64_t>{64, 2048}, std::pair<int64_t, int64_t>{0, 64},
                      std::pair<int64_t, int64_t>{5, 0}),
    ParamName);

}  // namespace
}  // namespace xt
