// CUDA RMSNorm backward against its CPU twin (ops::rmsnorm_backward) on random and awkward
// shapes, both din modes; dw must also be the same bits run after run (no atomics). Skipped
// (label `cuda`) where no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// ((N, C), accumulate_din)
class RmsnormBackwardCuda
    : public cudatest::CudaTest<std::tuple<std::pair<int64_t, int64_t>, bool>> {};

TEST_P(RmsnormBackwardCuda, MatchesTheCpuTwin) {
  const auto [shape, acc] = GetParam();
  const auto [N, C] = shape;
  std::mt19937 rng(unsigned(N * 131 + C * 7 + acc));
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> x(N * C), w(C), dy(N * C), y(N * C), rstd(N), din0(N * C), dw0(C);
  for (float& v : x) v = dist(rng);
  for (float& v : w) v = dist(rng);
  for (float& v : dy) v = dist(rng);
  for (float& v : din0) v = dist(rng);
  for (float& v : dw0) v = dist(rng);
  ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
  std::vector<float> din = din0, dw = dw0;
  ops::rmsnorm_backward(din.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C,
                        acc);

  DeviceVec<float> gx(x), gw(w), gdy(dy), gr(rstd), gdin(din0), gdw(dw0);
  ASSERT_TRUE(cuda::RmsnormBackward(gdin.p, gdw.p, gdy.p, gx.p, gw.p, gr.p, N, C, acc).ok());
  cudatest::Sync();
  const std::vector<float> got_din = gdin.Host(), got_dw = gdw.Host();

  // Reductions (the row dot, the column sums) are summed in double in another order: 1e-5
  // relative to the magnitudes of the terms (din cancels: dy*w - xhat*m).
  std::vector<double> din_scale(N * C), dw_scale(C);
  for (int64_t n = 0; n < N; ++n) {
    const double r = rstd[n];
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += double(dy[n * C + c]) * w[c] * x[n * C + c] * r;
    const double m = std::abs(dot / double(C));
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = n * C + c;
      din_scale[i] = (acc ? std::abs(din0[i]) : 0.0) +
                     r * (std::abs(double(dy[i]) * w[c]) + std::abs(double(x[i])) * r * m);
      dw_scale[c] += std::abs(double(dy[i]) * x[i] * r);
    }
  }
  for (int64_t c = 0; c < C; ++c) dw_scale[c] += std::abs(dw0[c]);
  cudatest::ExpectNearScaled(got_din, din, din_scale, 1e-5, "din");
  cudatest::ExpectNearScaled(got_dw, dw, dw_scale, 1e-5, "dw");

  // Deterministic: the same inputs give the same bits.
  DeviceVec<float> gdin2(din0), gdw2(dw0);
  ASSERT_TRUE(cuda::RmsnormBackward(gdin2.p, gdw2.p, gdy.p, gx.p, gw.p, gr.p, N, C, acc).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gdin2.Host(), got_din, "din (second run)");
  cudatest::ExpectBitEqual(gdw2.Host(), got_dw, "dw (second run)");
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<RmsnormBackwardCuda::ParamType>& info) {
  const auto& [nc, acc] = info.param;
  return std::to_string(nc.first) + "x" + std::to_string(nc.second) +
         (acc ? "_accumulate" : "_assign");
}

// One row, one column, sizes that are not a multiple of 32, a large C, zero rows and zero
// columns; dw with a single row chunk (64 x 2048) and with several (300 x 2048, 5000 x 128,
// 1000 x 33: the second reduction kernel).
INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsnormBackwardCuda,
    ::testing::Combine(
        ::testing::Values(
            std::pair<int64_t, int64_t>{1, 1}, std::pair<int64_t, int64_t>{3, 7},
            std::pair<int64_t, int64_t>{17, 257}, std::pair<int64_t, int64_t>{64, 2048},
            std::pair<int64_t, int64_t>{300, 2048}, std::pair<int64_t, int64_t>{5000, 128},
            std::pair<int64_t, int64_t>{1000, 33}, std::pair<int64_t, int64_t>{5, 12289},
            std::pair<int64_t, int64_t>{0, 64}, std::pair<int64_t, int64_t>{4, 0}),
        ::testing::Bool()),
    ParamName);

}  // namespace
}  // namespace xt
