// Global gradient norm and clipping: against a naive double norm, bit-identical for any thread
// count, torch's coefficient max_norm / (norm + 1e-6), and the non-finite cases.
#include "xtuner/optim/clip.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "util/testing.h"

namespace xt {
namespace {

using testing::RandomVector;

double NaiveNorm(const std::vector<float>& x) {
  long double s = 0;
  for (float v : x) s += (long double)v * v;
  return double(std::sqrt(s));
}

TEST(Clip, NormMatchesNaiveDoubleSum) {
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(7), int64_t(8), int64_t(1000), kNormChunk,
                    kNormChunk + 1, 3 * kNormChunk + 12345}) {
    auto g = RandomVector(n, 100 + n, 2.0f);
    const double want = NaiveNorm(g);
    EXPECT_NEAR(grad_norm(g.data(), n), want, 1e-14 * want) << n;
    EXPECT_NEAR(sum_of_squares(g.data(), n), want * want, 1e-14 * want * want) << n;
  }
}

TEST(Clip, NormHasTheSameBitsForAnyThreadCount) {
  const int64_t n = 5 * kNormChunk + 777;
  auto g = RandomVector(n, 3, 1e3f);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = sum_of_squares(g.data(), n);
  omp_set_num_threads(2);
  const double two = sum_of_squares(g.data(), n);
  omp_set_num_threads(3);
  const double three = sum_of_squares(g.data(), n);
  omp_set_num_threads(saved);
  EXPECT_EQ(std::memcmp(&one, &two, sizeof(double)), 0);
  EXPECT_EQ(std::memcmp(&one, &three, sizeof(double)), 0);
}

TEST(Clip, ScalesLikeTorchWithTheEpsilon) {
  // norm 5 (3-4-5), max_norm 1: coef = 1 / (5 + 1e-6), rounded to float.
  std::vector<float> g = {3, 4, 0};
  const double norm = clip_grad_norm(g.data(), 3, 1.0);
  EXPECT_EQ(norm, 5.0);  // the norm before clipping
  const float coef = float(1.0 / (5.0 + 1e-6));
  EXPECT_EQ(g[0], 3 * coef);
  EXPECT_EQ(g[1], 4 * coef);
  EXPECT_EQ(g[2], 0.0f);
  EXPECT_DOUBLE_EQ(clip_coef(5.0, 1.0), 1.0 / (5.0 + 1e-6));
  // The epsilon matters: clipping to the norm itself still scales, a hair below 1.
  EXPECT_LT(clip_coef(5.0, 5.0), 1.0);
  EXPECT_DOUBLE_EQ(clip_coef(5.0, 5.0), 5.0 / (5.0 + 1e-6));
  // Below the threshold: coefficient 1, gradients untouched.
  std::vector<float> h = {0.3f, 0.4f}, h0 = h;
  EXPECT_NEAR(clip_grad_norm(h.data(), 2, 1.0), 0.5, 1e-7);
  EXPECT_EQ(h, h0);
  EXPECT_EQ(clip_coef(0.0, 1.0), 1.0);
  // max_norm <= 0: measure only.
  std::vector<float> k = {30, 40}, k0 = k;
  EXPECT_EQ(clip_grad_norm(k.data(), 2, 0.0), 50.0);
  EXPECT_EQ(k, k0);
}

TEST(Clip, ClippedNormIsMaxNorm) {
  auto g = RandomVector(100000, 5, 10.0f);
  const double before = clip_grad_norm(g.data(), int64_t(g.size()), 2.5);
  EXPECT_GT(before, 2.5);
  EXPECT_NEAR(grad_norm(g.data(), int64_t(g.size())), 2.5 * before / (before + 1e-6), 1e-6);
}

TEST(Clip, NonFiniteNormIsReportedAndGradientsAreLeftAlone) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float bad : {std::nanf(""), inf, -inf}) {
    auto g = RandomVector(2 * kNormChunk, 9);
    g[kNormChunk + 17] = bad;
    auto g0 = g;
    const double norm = clip_grad_norm(g.data(), int64_t(g.size()), 1.0);
    EXPECT_FALSE(norm_is_finite(norm)) << bad;
    EXPECT_EQ(0, std::memcmp(g.data(), g0.data(), 4 * g.size()));
  }
  // Overflow of float squares does not happen in double: 1e30^2 is fine.
  std::vector<float> big = {1e30f, 1e30f};
  EXPECT_TRUE(norm_is_finite(grad_norm(big.data(), 2)));
  EXPECT_TRUE(norm_is_finite(0.0));
}

}  // namespace
}  // namespace xt
