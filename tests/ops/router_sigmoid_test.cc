// DeepSeek-V3's router (sigmoid scores, correction bias, group-limited top-k, scaled weights)
// against a plain double reference written from transformers' DeepseekV3TopkRouter, its backward
// against finite differences, and determinism over thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "util/testing.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using testing::Dot;
using testing::GradCheck;
using testing::RandomVector;

struct Spec {
  int64_t E, k, n_group, topk_group;
  bool norm;
  float scale;
};

struct Out {
  std::vector<int32_t> idx;
  std::vector<float> w, scores;
};

Out RunRouter(const std::vector<float>& logits, const std::vector<float>* bias, int64_t T,
              const Spec& s) {
  Out o{std::vector<int32_t>(T * s.k), std::vector<float>(T * s.k), std::vector<float>(T * s.E)};
  ops::router_sigmoid_forward(o.idx.data(), o.w.data(), o.scores.data(), logits.data(),
                              bias ? bias->data() : nullptr, T, s.E, s.k, s.n_group, s.topk_group,
                              s.norm, s.scale);
  return o;
}

// transformers' rule for one token, in double: group scores = sum of the two best biased scores,
// keep topk_group groups, the others' biased scores to -inf, take the k best; weights from the
// unbiased sigmoid. Returns the chosen experts (a set) and their weights by expert.
std::pair<std::set<int>, std::vector<double>> Reference(const float* z, const float* bias,
                                                        const Spec& s) {
  const int64_t per = s.E / s.n_group;
  std::vector<double> sc(s.E), ch(s.E);
  for (int64_t e = 0; e < s.E; ++e) {
    sc[e] = 1.0 / (1.0 + std::exp(-double(z[e])));
    ch[e] = sc[e] + (bias ? bias[e] : 0.0);
  }
  std::vector<double> gscore(s.n_group);
  for (int64_t g = 0; g < s.n_group; ++g) {
    std::vector<double> v(ch.begin() + g * per, ch.begin() + (g + 1) * per);
    std::sort(v.rbegin(), v.rend());
    gscore[g] = v[0] + v[1];
  }
  std::vector<int> groups(s.n_group);
  std::iota(groups.begin(), groups.end(), 0);
  std::stable_sort(groups.begin(), groups.end(),
                   [&](int a, int b) { return gscore[a] > gscore[b]; });
  std::vector<bool> keep(s.n_group, false);
  for (int64_t r = 0; r < s.topk_group; ++r) keep[groups[r]] = true;
  for (int64_t e = 0; e < s.E; ++e)
    if (!keep[e / per]) ch[e] = -std::numeric_limits<double>::infinity();
  std::vector<int> order(s.E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ch[a] > ch[b]; });
  std::set<int> chosen(order.begin(), order.begin() + s.k);
  double sum = 0;
  for (int e : chosen) sum += sc[e];
  std::vector<double> w(s.E, 0.0);
  for (int e : chosen) w[e] = sc[e] / (s.norm ? sum + 1e-20 : 1.0) * s.scale;
  return {chosen, w};
}

const Spec kSpecs[] = {
    {8, 2, 2, 1, true, 2.5f},    // the fixture's router
    {16, 4, 4, 3, false, 1.5f},  // several groups kept, no renormalisation
    {12, 3, 1, 1, true, 1.0f},   // one group: plain top-k of sigmoid + bias
    {64, 8, 8, 4, true, 2.5f},   // DeepSeek-V3's proportions
    {6, 6, 3, 3, true, 1.0f},    // every expert chosen
    {4, 2, 2, 1, false, 1.0f},   // groups of two: the group score is the whole group
};

TEST(RouterSigmoid, ForwardMatchesTransformersRule) {
  const int64_t T = 29;
  for (const Spec& s : kSpecs) {
    for (bool with_bias : {false, true}) {
      auto logits = RandomVector(T * s.E, 31 + s.E, 3.0f);
      auto bias = RandomVector(s.E, 41 + s.E, 0.3f);
      Out o = RunRouter(logits, with_bias ? &bias : nullptr, T, s);
      for (int64_t t = 0; t < T; ++t) {
        auto [chosen, w] = Reference(&logits[t * s.E], with_bias ? bias.data() : nullptr, s);
        std::set<int> got(o.idx.begin() + t * s.k, o.idx.begin() + (t + 1) * s.k);
        ASSERT_EQ(got, chosen) << "E=" << s.E << " token " << t << " bias " << with_bias;
        for (int64_t j = 0; j < s.k; ++j)
          EXPECT_NEAR(o.w[t * s.k + j], w[o.idx[t * s.k + j]], 1e-6 * s.scale) << "E=" << s.E;
        for (int64_t e = 0; e < s.E; ++e)
          EXPECT_NEAR(o.scores[t * s.E + e], 1.0 / (1.0 + std::exp(-double(logits[t * s.E + e]))),
                      1e-7);
      }
    }
  }
}

TEST(RouterSigmoid, TheGroupAndTheBiasDecideTheChoiceNotTheWeights) {
  // Group 0 holds the single best expert (0) but a weak second; group 1 two good ones: with one
  // group kept, group 1 wins on the sum of its two best and expert 0 is not chosen.
  const Spec s{4, 2, 2, 1, false, 1.0f};
  std::vector<float> z = {4.0f, -4.0f, 2.0f, 2.0f};
  Out o = RunRouter(z, nullptr, 1, s);
  EXPECT_EQ(std::set<int>(o.idx.begin(), o.idx.end()), (std::set<int>{2, 3}));
  // A bias large enough to lift group 0 changes the choice; the weights stay the sigmoids.
  std::vector<float> bias = {0.0f, 2.0f, 0.0f, 0.0f};
  o = RunRouter(z, &bias, 1, s);
  EXPECT_EQ(std::set<int>(o.idx.begin(), o.idx.end()), (std::set<int>{0, 1}));
  for (int j = 0; j < 2; ++j)
    EXPECT_FLOAT_EQ(o.w[j], float(1.0 / (1.0 + std::exp(-double(z[o.idx[j]])))));
}

TEST(RouterSigmoid, AnExpertOutsideTheKeptGroupsIsNeverChosen) {
  // Group 0 (sum 0.88 + -0.5) beats group 1 (0.1 + 0.1); expert 1's biased score is negative.
  // transformers 5 masks the dropped group with -inf, so expert 1 is chosen, not 2 or 3 (whose
  // masked score would be 0 under transformers 4's rule).
  const Spec s{4, 2, 2, 1, true, 1.0f};
  std::vector<float> z = {2.0f, 0.0f, -2.2f, -2.2f}, bias = {0.0f, -1.0f, 0.0f, 0.0f};
  Out o = RunRouter(z, &bias, 1, s);
  EXPECT_EQ(std::set<int>(o.idx.begin(), o.idx.end()), (std::set<int>{0, 1}));
}

TEST(RouterSigmoid, BackwardMatchesFiniteDifferences) {
  const int64_t T = 7;
  for (const Spec& s : kSpecs) {
    auto bias = RandomVector(s.E, 5, 0.05f);
    // Logits spread apart (a rotated ramp) with noise that breaks ties between group sums, so
    // that a step of 1e-3 never changes the choice.
    // The ramp spans [-2, 2] whatever E, where the sigmoid's slope is not small.
    std::vector<float> logits(T * s.E);
    const float step = 4.0f / float(s.E);
    auto noise = RandomVector(T * s.E, 6 + s.E, 0.25f * step);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < s.E; ++e)
        logits[t * s.E + e] = step * float((e + 3 * t + 1) % s.E - s.E / 2) + noise[t * s.E + e];
    Out out = RunRouter(logits, &bias, T, s);
    auto g = RandomVector(T * s.k, 9);
    std::vector<float> dlogits(T * s.E, NAN);
    ops::router_sigmoid_backward(dlogits.data(), g.data(), out.scores.data(), out.idx.data(), T,
                                 s.E, s.k, s.norm, s.scale);
    auto loss = [&] {
      Out o = RunRouter(logits, &bias, T, s);
      EXPECT_EQ(o.idx, out.idx);  // the step must not change the choice
      return Dot(o.w.data(), g);
    };
    EXPECT_LT(GradCheck(logits, dlogits, loss, 1e-3, 96), 1e-3) << "E=" << s.E << " k=" << s.k;
  }
}

TEST(RouterSigmoid, DeterministicAcrossThreadCounts) {
  const Spec s{64, 8, 8, 4, true, 2.5f};
  const int64_t T = 301;
  auto logits = RandomVector(T * s.E, 21, 2.0f);
  auto bias = RandomVector(s.E, 22, 0.1f);
  auto g = RandomVector(T * s.k, 23);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Out o = RunRouter(logits, &bias, T, s);
    std::vector<float> d(T * s.E);
    ops::router_sigmoid_backward(d.data(), g.data(), o.scores.data(), o.idx.data(), T, s.E, s.k,
                                 s.norm, s.scale);
    return std::make_tuple(o.idx, o.w, d);
  };
  const int saved = omp_get_max_threads();
  auto one = run(1), two = run(2), three = run(3);
  omp_set_num_threads(saved);
  EXPECT_TRUE(one == two && two == three);
}

}  // namespace
}  // namespace xt
