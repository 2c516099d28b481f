// The MoE router (softmax, top-k, renormalisation) against a plain double reference, its backward
// against finite differences, the load-balancing statistics, and determinism over thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "util/testing.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using testing::Dot;
using testing::GradCheck;
using testing::RandomVector;
using testing::RelError;

// Logits whose values per token are at least 0.5 apart (a shuffled ramp plus small noise), so
// that a finite-difference step never changes which experts are selected.
std::vector<float> SeparatedLogits(int64_t T, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto noise = RandomVector(T * E, seed + 1, 0.1f);
  std::vector<float> z(T * E);
  std::vector<int> perm(E);
  for (int64_t t = 0; t < T; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t e = 0; e < E; ++e) z[t * E + e] = 0.6f * float(perm[e] - E / 2) + noise[t * E + e];
  }
  return z;
}

struct RouterOut {
  std::vector<int32_t> idx;
  std::vector<float> w, probs;
};

RouterOut RunRouter(const std::vector<float>& logits, int64_t T, int64_t E, int64_t k, bool norm) {
  RouterOut r{std::vector<int32_t>(T * k), std::vector<float>(T * k), std::vector<float>(T * E)};
  ops::router_forward(r.idx.data(), r.w.data(), r.probs.data(), logits.data(), T, E, k, norm);
  return r;
}

TEST(Router, ForwardMatchesReference) {
  struct Case {
    int64_t T, E, k;
  };
  for (Case c : {Case{1, 4, 1}, Case{7, 8, 2}, Case{33, 16, 4}, Case{5, 6, 6}, Case{9, 1, 1},
                 Case{17, 128, 8}}) {
    for (bool norm : {false, true}) {
      auto logits = RandomVector(c.T * c.E, 11 + c.E, 3.0f);
      RouterOut r = RunRouter(logits, c.T, c.E, c.k, norm);
      std::vector<double> probs(c.T * c.E), w(c.T * c.k);
      for (int64_t t = 0; t < c.T; ++t) {
        const float* z = &logits[t * c.E];
        double mx = *std::max_element(z, z + c.E), s = 0;
        for (int64_t e = 0; e < c.E; ++e) s += std::exp(z[e] - mx);
        std::vector<int> order(c.E);
        std::iota(order.begin(), order.end(), 0);
        for (int64_t e = 0; e < c.E; ++e) probs[t * c.E + e] = std::exp(z[e] - mx) / s;
        std::stable_sort(order.begin(), order.end(),
                         [&](int a, int b) { return probs[t * c.E + a] > probs[t * c.E + b]; });
        double sel = 0;
        for (int64_t j = 0; j < c.k; ++j) sel += probs[t * c.E + order[j]];
        for (int64_t j = 0; j < c.k; ++j) {
          ASSERT_EQ(r.idx[t * c.k + j], order[j]) << "T=" << c.T << " E=" << c.E << " t=" << t;
          w[t * c.k + j] = probs[t * c.E + order[j]] / (norm ? sel : 1.0);
        }
      }
      EXPECT_LT(RelError(r.probs.data(), probs.data(), c.T * c.E), 1e-6);
      EXPECT_LT(RelError(r.w.data(), w.data(), c.T * c.k), 1e-6);
      if (norm) {
        for (int64_t t = 0; t < c.T; ++t) {
          float s = 0;
          for (int64_t j = 0; j < c.k; ++j) s += r.w[t * c.k + j];
          EXPECT_NEAR(s, 1.0f, 1e-6f);
        }
      }
    }
  }
}

TEST(Router, TiesGoToTheLowerIndex) {
  // Experts 1, 2 and 4 tie for the largest probability, 0 and 5 for the next.
  std::vector<float> logits = {0.5f, 3.0f, 3.0f, -1.0f, 3.0f, 0.5f};
  RouterOut r = RunRouter(logits, 1, 6, 5, false);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{1, 2, 4, 0, 5}));
  EXPECT_EQ(r.w[0], r.w[1]);
  EXPECT_EQ(r.w[3], r.w[4]);
  // All equal: experts in index order.
  r = RunRouter(std::vector<float>(8, 0.25f), 1, 8, 8, true);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  for (float w : r.w) EXPECT_FLOAT_EQ(w, 0.125f);
}

TEST(Router, BackwardMatchesFiniteDifferences) {
  const int64_t T = 6, E = 8;
  for (int64_t k : {1, 2, 3, 8}) {
    for (bool norm : {false, true}) {
      for (bool with_dprobs : {false, true}) {
        auto logits = SeparatedLogits(T, E, 100 + k);
        auto r = RandomVector(T * k, 7), r2 = RandomVector(T * E, 8);
        RouterOut out = RunRouter(logits, T, E, k, norm);
        std::vector<float> dlogits(T * E, NAN);
        ops::router_backward(dlogits.data(), r.data(), with_dprobs ? r2.data() : nullptr,
                             out.probs.data(), out.idx.data(), T, E, k, norm);
        auto loss = [&] {
          RouterOut o = RunRouter(logits, T, E, k, norm);
          EXPECT_EQ(o.idx, out.idx);  // the step must not change the selection
          return Dot(o.w.data(), r) + (with_dprobs ? Dot(o.probs.data(), r2) : 0.0);
        };
        EXPECT_LT(GradCheck(logits, dlogits, loss, 1e-2, 64), 2e-4)
            << "k=" << k << " norm=" << norm << " dprobs=" << with_dprobs;
      }
    }
  }
}

TEST(Router, BalanceStatsAccumulateInDouble) {
  const int64_t T = 37, E = 12, k = 3;
  RouterOut r = RunRouter(RandomVector(T * E, 5, 2.0f), T, E, k, true);
  std::vector<double> count(E, 2.0), prob_sum(E, 0.5), ref_count(E, 2.0), ref_sum(E, 0.5);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) ref_count[r.idx[t * k + j]] += 1;
    for (int64_t e = 0; e < E; ++e) ref_sum[e] += r.probs[t * E + e];
  }
  ops::moe_balance_stats(count.data(), prob_sum.data(), r.probs.data(), r.idx.data(), T, E, k);
  EXPECT_EQ(count, ref_count);
  EXPECT_EQ(prob_sum, ref_sum);  // same order (token order, onto the old value): bit-identical
  double total = 0;
  for (int64_t e = 0; e < E; ++e) total += prob_sum[e] - 0.5;
  EXPECT_NEAR(total, double(T), 1e-5);
}

TEST(Router, DeterministicAcrossRunsAndThreadCounts) {
  const int64_t T = 301, E = 64, k = 8;
  auto logits = RandomVector(T * E, 21, 2.0f);
  auto g = RandomVector(T * k, 22), gp = RandomVector(T * E, 23);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    RouterOut r = RunRouter(logits, T, E, k, true);
    std::vector<float> dlogits(T * E);
    ops::router_backward(dlogits.data(), g.data(), gp.data(), r.probs.data(), r.idx.data(), T, E, k,
                         true);
    std::vector<double> count(E, 0), psum(E, 0);
    ops::moe_balance_stats(count.data(), psum.data(), r.probs.data(), r.idx.data(), T, E, k);
    std::vector<uint8_t> bytes;
    auto put = [&](const void* p, size_t n) {
      bytes.insert(bytes.end(), (const uint8_t*)p, (const uint8_t*)p + n);
    };
    put(r.idx.data(), r.idx.size() * 4);
    put(r.w.data(), r.w.size() * 4);
    put(r.probs.data(), r.probs.size() * 4);
    put(dlogits.data(), dlogits.size() * 4);
    put(count.data(), count.size() * 8);
    put(psum.data(), psum.size() * 8);
    return bytes;
  };
  int saved = omp_get_max_threads();
  auto a = run(2), b = run(2), c = run(1), d = run(3);
  omp_set_num_threads(saved);
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a == c);
  EXPECT_TRUE(a == d);
}

}  // namespace
}  // namespace xt
