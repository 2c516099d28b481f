// Chunked lm_head + cross-entropy against the full-logits computation, for every chunk size,
// and its backward against finite differences; the balancing loss against its definition.
#include "xtuner/loss/cross_entropy.h"

#include <gtest/gtest.h>

#include <cmath>

#include "util/testing.h"
#include "xtuner/loss/balance.h"

namespace xt {
namespace {

using testing::RandomVector;

// Full logits in double, then mean-free sum of -log p[target].
double NaiveLoss(const std::vector<float>& h, const std::vector<float>& w,
                 const std::vector<int32_t>& y, int64_t H, int64_t V) {
  double total = 0;
  for (size_t t = 0; t < y.size(); ++t) {
    if (y[t] == kIgnoreIndex) continue;
    std::vector<double> z(V);
    double m = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t i = 0; i < H; ++i) z[v] += double(h[t * H + i]) * w[v * H + i];
      m = std::max(m, z[v]);
    }
    double s = 0;
    for (double zv : z) s += std::exp(zv - m);
    total += m + std::log(s) - z[y[t]];
  }
  return total;
}

TEST(ChunkedCrossEntropy, EveryChunkSizeGivesTheSameLossAndGradients) {
  const int64_t T = 11, H = 6, V = 29;
  auto h = RandomVector(T * H, 1), w = RandomVector(V * H, 2);
  std::vector<int32_t> y = {3, kIgnoreIndex, 0, 28, 5, 5, kIgnoreIndex, 17, 1, 2, kIgnoreIndex};
  const double want = NaiveLoss(h, w, y, H, V);
  std::vector<float> dh_ref, dw_ref;
  for (int64_t chunk : {1, 2, 3, 7, 8, 100, 0}) {
    std::vector<float> dh(T * H, 5.0f), dw(V * H, 0.0f);
    double got = chunked_cross_entropy(dh.data(), dw.data(), h.data(), w.data(), y.data(), T, H, V,
                                       0.125, chunk);
    EXPECT_NEAR(got, want, 1e-5 * want) << "chunk " << chunk;
    for (int64_t i = 0; i < H; ++i) EXPECT_EQ(dh[1 * H + i], 0.0f);  // ignored rows get 0
    if (dh_ref.empty()) {
      dh_ref = dh, dw_ref = dw;
    } else {
      EXPECT_LT(testing::RelError(dh.data(), dh_ref.data(), T * H), 1e-6) << chunk;
      EXPECT_LT(testing::RelError(dw.data(), dw_ref.data(), V * H), 1e-6) << chunk;
    }
  }
  // Backward: gradient of weight * loss.
  auto loss = [&] { return 0.125 * NaiveLoss(h, w, y, H, V); };
  EXPECT_LT(testing::GradCheck(h, dh_ref, loss, 1e-3), 1e-4);
  EXPECT_LT(testing::GradCheck(w, dw_ref, loss, 1e-3), 1e-4);
}

TEST(ChunkedCrossEntropy, NoLossTokensCostsNothing) {
  const int64_t T = 3, H = 2, V = 5;
  auto h = RandomVector(T * H, 3), w = RandomVector(V * H, 4);
  std::vector<int32_t> y(T, kIgnoreIndex);
  std::vector<float> dh(T * H, 1.0f), dw(V * H, 0.0f);
  EXPECT_EQ(chunked_cross_entropy(dh.data(), dw.data(), h.data(), w.data(), y.data(), T, H, V, 1),
            0.0);
  for (float g : dh) EXPECT_EQ(g, 0.0f);
  for (float g : dw) EXPECT_EQ(g, 0.0f);
}

TEST(BalanceLoss, MatchesTransformersDefinition) {
  // Two layers of 2 tokens, E = 3, k = 1: N = 4 rows pooled.
  const double count[3] = {2, 1, 1};
  const double prob_sum[3] = {1.5, 1.0, 1.5};
  double d[3];
  const double aux = balance_loss(d, count, prob_sum, 4, 3);
  // E * sum_e (count_e / N) * (prob_sum_e / N)
  EXPECT_DOUBLE_EQ(aux, 3 * (2.0 / 4 * 1.5 / 4 + 1.0 / 4 * 1.0 / 4 + 1.0 / 4 * 1.5 / 4));
  EXPECT_DOUBLE_EQ(d[0], 3 * 2.0 / 16);
  EXPECT_DOUBLE_EQ(d[2], 3 * 1.0 / 16);
  // Uniform routing gives exactly k.
  const double c2[2] = {4, 4}, p2[2] = {4, 4};
  EXPECT_DOUBLE_EQ(balance_loss(d, c2, p2, 8, 2), 1.0);
}

}  // namespace
}  // namespace xt
