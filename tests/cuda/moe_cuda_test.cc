// CUDA MoE permute / un-permute (combine) forward and backward against their CPU twins
// (ops::moe_permute, moe_permute_backward, moe_combine_forward, moe_combine_backward), with the
// plan made on the host by ops::moe_plan, on random and awkward shapes (experts without rows,
// k = E, H not a multiple of 32, zero tokens, H = 0). Skipped (label `cuda`) where no GPU is
// present.
//
// Bit for bit: permute and its backward (copies, and adds in slot order), dys (one product).
// combine_forward sums w_j * ys_j: the GPU fuses each step into a multiply-add, the CPU compiler
// may or may not, so 1e-6 relative to sum_j |w_j ys_j|. dtopk_w is a dot product summed in
// double in another order: 1e-5 relative to sum_h |dy ys|.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
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

// (T, E, k, H)
class MoeCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t, int64_t, int64_t>> {};

TEST_P(MoeCuda, MatchesTheCpuTwin) {
  const auto [T, E, k, H] = GetParam();
  const int64_t A = T * k;
  std::mt19937 rng(unsigned(T * 1009 + E * 101 + k * 11 + H));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  // k distinct experts per token, as the router picks them.
  std::vector<int32_t> topk_idx(A), experts(E);
  std::iota(experts.begin(), experts.end(), 0);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);
    std::copy(experts.begin(), experts.begin() + k, topk_idx.begin() + t * k);
  }
  std::vector<int32_t> offsets(E + 1), sorted(A), slot_of(A);
  ops::moe_plan(offsets.data(), sorted.data(), slot_of.data(), topk_idx.data(), T, E, k);

  std::vector<float> x(T * H), dxs(A * H), dx0(T * H), ys(A * H), topk_w(A), dy(T * H);
  for (auto* v : {&x, &dxs, &dx0, &ys, &topk_w, &dy})
    for (float& f : *v) f = dist(rng);

  std::vector<float> xs(A * H), dx = dx0, y(T * H), dys(A * H), dtopk_w(A);
  ops::moe_permute(xs.data(), x.data(), sorted.data(), A, k, H);
  ops::moe_permute_backward(dx.data(), dxs.data(), slot_of.data(), T, k, H);
  ops::moe_combine_forward(y.data(), ys.data(), topk_w.data(), slot_of.data(), T, k, H);
  ops::moe_combine_backward(dys.data(), dtopk_w.data(), dy.data(), ys.data(), topk_w.data(),
                            slot_of.data(), T, k, H);

  DeviceVec<int32_t> gsorted(sorted), gslot(slot_of);
  DeviceVec<float> gx(x), gdxs(dxs), gdx(dx0), gys(ys), gw(topk_w), gdy(dy);
  DeviceVec<float> gxs{std::vector<float>(A * H)}, gy{std::vector<float>(T * H)},
      gdys{std::vector<float>(A * H)}, gdw{std::vector<float>(A)};
  ASSERT_TRUE(cuda::MoePermute(gxs.p, gx.p, gsorted.p, A, k, H).ok());
  ASSERT_TRUE(cuda::MoePermuteBackward(gdx.p, gdxs.p, gslot.p, T, k, H).ok());
  ASSERT_TRUE(cuda::MoeCombineForward(gy.p, gys.p, gw.p, gslot.p, T, k, H).ok());
  ASSERT_TRUE(cuda::MoeCombineBackward(gdys.p, gdw.p, gdy.p, gys.p, gw.p, gslot.p, T, k, H).ok());
  cudatest::Sync();

  cudatest::ExpectBitEqual(gxs.Host(), xs, "xs");
  cudatest::ExpectBitEqual(gdx.Host(), dx, "dx");
  cudatest::ExpectBitEqual(gdys.Host(), dys, "dys");
  std::vector<double> y_scale(T * H), dw_scale(A);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = slot_of[t * k + j];
      for (int64_t h = 0; h < H; ++h) {
        y_scale[t * H + h] += std::abs(double(topk_w[t * k + j]) * ys[p * H + h]);
        dw_scale[t * k + j] += std::abs(double(dy[t * H + h]) * ys[p * H + h]);
      }
    }
  cudatest::ExpectNearScaled(gy.Host(), y, y_scale, 1e-6, "y");
  cudatest::ExpectNearScaled(gdw.Host(), dtopk_w, dw_scale, 1e-5, "dtopk_w");

  // The bf16 outputs (bf16 mode): xs and dys rounded to nearest even, bit for bit; dtopk_w
  // unchanged.
  DeviceVec<uint16_t> gxs16{std::vector<uint16_t>(A * H)}, gdys16{std::vector<uint16_t>(A * H)};
  DeviceVec<float> gdw2{std::vector<float>(A)};
  ASSERT_TRUE(cuda::MoePermute(gxs16.p, gx.p, gsorted.p, A, k, H).ok());
  ASSERT_TRUE(
      cuda::MoeCombineBackward(gdys16.p, gdw2.p, gdy.p, gys.p, gw.p, gslot.p, T, k, H).ok());
  cudatest::Sync();
  cudatest::ExpectRoundedBitForBit(gxs16.Host(), xs, "xs bf16");
  cudatest::ExpectRoundedBitForBit(gdys16.Host(), dys, "dys bf16");
  cudatest::ExpectBitEqual(gdw2.Host(), gdw.Host(), "dtopk_w beside bf16 dys");

  // ys kept for the backward in bf16: the forward writes it rounded beside the same y, and the
  // backward from it equals the backward from the rounded values in fp32.
  DeviceVec<uint16_t> gys16{std::vector<uint16_t>(A * H)};
  DeviceVec<float> gy2{std::vector<float>(T * H)};
  ASSERT_TRUE(cuda::MoeCombineForward(gy2.p, gys16.p, gys.p, gw.p, gslot.p, T, k, H).ok());
  cudatest::Sync();
  const std::vector<uint16_t> ys16 = gys16.Host();
  cudatest::ExpectBitEqual(gy2.Host(), gy.Host(), "y beside bf16 ys");
  if (T > 0 && H > 0) cudatest::ExpectRoundedBitForBit(ys16, ys, "ys bf16");
  std::vector<float> rounded(ys16.size());
  for (size_t i = 0; i < ys16.size(); ++i) rounded[i] = Bf16ToF32(ys16[i]);
  DeviceVec<float> grounded(rounded), gdw_want{std::vector<float>(A)},
      gdw_got{std::vector<float>(A)};
  DeviceVec<uint16_t> gdys_want{std::vector<uint16_t>(A * H)},
      gdys_got{std::vector<uint16_t>(A * H)};
  ASSERT_TRUE(
      cuda::MoeCombineBackward(gdys_want.p, gdw_want.p, gdy.p, grounded.p, gw.p, gslot.p, T, k, H)
          .ok());
  ASSERT_TRUE(
      cuda::MoeCombineBackward(gdys_got.p, gdw_got.p, gdy.p, gys16.p, gw.p, gslot.p, T, k, H).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gdw_got.Host(), gdw_want.Host(), "dtopk_w from bf16 ys");
  EXPECT_EQ(gdys_got.Host(), gdys_want.Host());
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<MoeCuda::ParamType>& info) {
  const auto& [T, E, k, H] = info.param;
  return std::to_string(T) + "x" + std::to_string(E) + "x" + std::to_string(k) + "x" +
         std::to_string(H);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoeCuda,
    ::testing::Values(std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 1, 1, 1},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{3, 4, 2, 7},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{33, 3, 3, 64},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{17, 8, 2, 257},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{100, 16, 4, 33},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{4, 128, 8, 512},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{256, 64, 8, 1024},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{0, 8, 2, 64},
                      std::tuple<int64_t, int64_t, int64_t, int64_t>{5, 8, 2, 0}),
    ParamName);

}  // namespace
}  // namespace xt
