// CUDA RoPE forward and backward (in place) against their CPU twins (ops::rope_forward/backward)
// on random and awkward shapes, odd D included, and the forward into bf16 against the in-place
// one rounded. Skipped (label `cuda`) where no GPU is present.
//
// Each output is a*c -/+ b*s: the GPU may fuse it into one multiply-add and the CPU compiler
// may or may not, so the results agree to 1e-6 relative to |a c| + |b s| (the terms cancel),
// not bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/core/dtype.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// (T, Hn, D)
class RopeCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t, int64_t>> {};

// The magnitudes each output of the rotation is computed from.
std::vector<double> RotationScale(const std::vector<float>& x, const std::vector<float>& cos,
                                  const std::vector<float>& sin, int64_t T, int64_t Hn, int64_t D) {
  const int64_t half = D / 2;
  std::vector<double> scale(x.size());
  for (size_t i = 0; i < x.size(); ++i) scale[i] = std::abs(x[i]);  // odd D: untouched last
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hn; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t row = (t * Hn + h) * D;
        const double a = std::abs(x[row + i]), b = std::abs(x[row + i + half]);
        const double c = std::abs(cos[t * half + i]), s = std::abs(sin[t * half + i]);
        scale[row + i] = a * c + b * s;
        scale[row + i + half] = b * c + a * s;
      }
  return scale;
}

TEST_P(RopeCuda, MatchesTheCpuTwin) {
  const auto [T, Hn, D] = GetParam();
  const int64_t half = D / 2;
  std::mt19937 rng(unsigned(T * 1009 + Hn * 31 + D));
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> x(T * Hn * D), cos(T * half), sin(T * half);
  for (float& v : x) v = dist(rng);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(t) * std::pow(10000.0, -2.0 * double(i) / double(D));
      cos[t * half + i] = float(std::cos(angle));
      sin[t * half + i] = float(std::sin(angle));
    }
  std::vector<float> fwd = x, bwd = x;
  ops::rope_forward(fwd.data(), cos.data(), sin.data(), T, Hn, D);
  ops::rope_backward(bwd.data(), cos.data(), sin.data(), T, Hn, D);

  DeviceVec<float> gfwd(x), gbwd(x), gcos(cos), gsin(sin);
  ASSERT_TRUE(cuda::RopeForward(gfwd.p, gcos.p, gsin.p, T, Hn, D).ok());
  ASSERT_TRUE(cuda::RopeBackward(gbwd.p, gcos.p, gsin.p, T, Hn, D).ok());
  cudatest::Sync();
  const std::vector<double> scale = RotationScale(x, cos, sin, T, Hn, D);
  cudatest::ExpectNearScaled(gfwd.Host(), fwd, scale, 1e-6, "forward");
  cudatest::ExpectNearScaled(gbwd.Host(), bwd, scale, 1e-6, "backward");
}

// The forward into bf16 writes the in-place forward's result rounded to nearest even, bit for bit
// (an odd D's last element rounded as is), and leaves its input alone.
TEST_P(RopeCuda, Bf16ForwardRoundsTheInPlaceForward) {
  const auto [T, Hn, D] = GetParam();
  const int64_t half = D / 2;
  std::mt19937 rng(unsigned(T * 7 + Hn * 131 + D));
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::uniform_real_distribution<float> angle(-3.2f, 3.2f);
  std::vector<float> x(T * Hn * D), cos(T * half), sin(T * half);
  for (float& v : x) v = dist(rng);
  for (int64_t i = 0; i < T * half; ++i) {
    const float a = angle(rng);
    cos[i] = std::cos(a);
    sin[i] = std::sin(a);
  }
  DeviceVec<float> gx(x), gfwd(x), gcos(cos), gsin(sin);
  DeviceVec<uint16_t> g16(std::vector<uint16_t>(x.size(), 0x7fc1));  // a NaN: all overwritten
  ASSERT_TRUE(cuda::RopeForward(g16.p, gx.p, gcos.p, gsin.p, T, Hn, D).ok());
  ASSERT_TRUE(cuda::RopeForward(gfwd.p, gcos.p, gsin.p, T, Hn, D).ok());
  cudatest::Sync();
  const std::vector<float> fwd = gfwd.Host();
  const std::vector<uint16_t> got = g16.Host();
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != F32ToBf16(fwd[i]) && bad++ < 5)
      ADD_FAILURE() << "element " << i << ": " << got[i] << " != " << F32ToBf16(fwd[i]);
  EXPECT_EQ(bad, 0u);
  cudatest::ExpectBitEqual(gx.Host(), x, "the input");
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<RopeCuda::ParamType>& info) {
  const auto& [T, Hn, D] = info.param;
  return std::to_string(T) + "x" + std::to_string(Hn) + "x" + std::to_string(D);
}

// One pair, odd D (7, 1), half not a multiple of 32 (33), model-sized heads, zero tokens, heads
// or head dim.
INSTANTIATE_TEST_SUITE_P(Shapes, RopeCuda,
                         ::testing::Values(std::tuple<int64_t, int64_t, int64_t>{1, 1, 2},
                                           std::tuple<int64_t, int64_t, int64_t>{3, 2, 7},
                                           std::tuple<int64_t, int64_t, int64_t>{33, 5, 66},
                                           std::tuple<int64_t, int64_t, int64_t>{17, 3, 64},
                                           std::tuple<int64_t, int64_t, int64_t>{129, 8, 128},
                                           std::tuple<int64_t, int64_t, int64_t>{4, 2, 1},
                                           std::tuple<int64_t, int64_t, int64_t>{0, 4, 64},
                                           std::tuple<int64_t, int64_t, int64_t>{4, 0, 64},
                                           std::tuple<int64_t, int64_t, int64_t>{4, 2, 0}),
                         ParamName);

}  // namespace
}  // namespace xt
