// The dropless MoE path: moe_plan on awkward routings, then plan -> permute -> grouped linear
// (gate|up) -> silu(gate) * up -> grouped linear (down) -> combine against a naive per-token loop
// in double, its backward against finite differences, and determinism over runs and thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "util/testing.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using testing::Dot;
using testing::GradCheck;
using testing::RandomVector;
using testing::RelError;

// A routing topk_idx (T, k): k distinct experts per token, drawn from `allowed` (shuffled), with
// `forced` (when >= 0) always among them at a random slot.
std::vector<int32_t> Routing(int64_t T, int64_t k, std::vector<int32_t> allowed, int32_t forced,
                             uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> idx(T * k);
  if (forced >= 0)
    allowed.erase(std::remove(allowed.begin(), allowed.end(), forced), allowed.end());
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(allowed.begin(), allowed.end(), rng);
    std::vector<int32_t> row(allowed.begin(), allowed.begin() + (k - (forced >= 0)));
    if (forced >= 0) row.insert(row.begin() + int64_t(rng() % k), forced);
    std::copy(row.begin(), row.end(), idx.begin() + t * k);
  }
  return idx;
}

std::vector<int32_t> Experts(int64_t E, int32_t except = -1) {
  std::vector<int32_t> v;
  for (int32_t e = 0; e < E; ++e)
    if (e != except) v.push_back(e);
  return v;
}

struct Case {
  std::string name;
  int64_t T, E, k, H, I;
  std::vector<int32_t> idx;  // (T, k)
};

// The awkward routings of the brief, each small enough for finite differences.
std::vector<Case> AwkwardCases() {
  return {
      {"random", 13, 6, 2, 16, 8, Routing(13, 2, Experts(6), -1, 1)},
      {"empty_expert", 13, 6, 2, 16, 8, Routing(13, 2, Experts(6, /*except=*/1), -1, 2)},
      {"all_on_one_k1", 9, 4, 1, 12, 6, std::vector<int32_t>(9, 2)},
      {"all_share_one", 10, 5, 3, 12, 6, Routing(10, 3, Experts(5), /*forced=*/4, 3)},
      {"k1", 11, 5, 1, 16, 8, Routing(11, 1, Experts(5), -1, 4)},
      {"k_eq_E", 7, 4, 4, 12, 6, Routing(7, 4, Experts(4), -1, 5)},
      {"T1", 1, 8, 3, 16, 8, Routing(1, 3, Experts(8), -1, 6)},
      {"T1_k1_E1", 1, 1, 1, 8, 4, {0}},
  };
}

// ------------------------------------------------------------------------------------- plan

void CheckPlan(const Case& c) {
  const int64_t A = c.T * c.k;
  std::vector<int32_t> offsets(c.E + 1, -7), sorted(A, -7), slot_of(A, -7);
  ops::moe_plan(offsets.data(), sorted.data(), slot_of.data(), c.idx.data(), c.T, c.E, c.k);
  ASSERT_EQ(offsets[0], 0) << c.name;
  ASSERT_EQ(offsets[c.E], A) << c.name;
  for (int64_t e = 0; e < c.E; ++e) {
    int64_t n = std::count(c.idx.begin(), c.idx.end(), int32_t(e));
    ASSERT_EQ(offsets[e + 1] - offsets[e], n) << c.name << " expert " << e;
    for (int32_t p = offsets[e]; p < offsets[e + 1]; ++p) {
      ASSERT_EQ(c.idx[sorted[p]], e) << c.name;
      if (p > offsets[e]) {
        ASSERT_LT(sorted[p - 1], sorted[p]) << c.name << ": not stable";
      }
    }
  }
  for (int64_t a = 0; a < A; ++a) ASSERT_EQ(sorted[slot_of[a]], a) << c.name;
}

TEST(MoePlan, HandWorkedExample) {
  // Token 0 -> experts (2, 0), token 1 -> (0, 2), token 2 -> (3, 0); expert 1 gets nothing.
  std::vector<int32_t> idx = {2, 0, 0, 2, 3, 0}, offsets(5), sorted(6), slot_of(6);
  ops::moe_plan(offsets.data(), sorted.data(), slot_of.data(), idx.data(), 3, 4, 2);
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 3, 3, 5, 6}));
  EXPECT_EQ(sorted, (std::vector<int32_t>{1, 2, 5, 0, 3, 4}));
  EXPECT_EQ(slot_of, (std::vector<int32_t>{3, 0, 1, 4, 5, 2}));
}

TEST(MoePlan, AwkwardRoutings) {
  for (const Case& c : AwkwardCases()) CheckPlan(c);
  // Larger: many empty experts, and one expert taking every token.
  CheckPlan({"sparse", 50, 64, 2, 1, 1, Routing(50, 2, {3, 9, 60}, -1, 9)});
  CheckPlan({"all_on_one_big", 300, 16, 1, 1, 1, std::vector<int32_t>(300, 15)});
}

// ------------------------------------------------------------------------------- whole path

struct Params {
  std::vector<float> x;       // (T, H)
  std::vector<float> topk_w;  // (T, k)
  std::vector<float> w1;      // (E, 2I, H): [gate | up] rows
  std::vector<float> w2;      // (E, H, I)
};

Params MakeParams(const Case& c, uint64_t seed) {
  return {RandomVector(c.T * c.H, seed), RandomVector(c.T * c.k, seed + 1, 1.0f),
          RandomVector(c.E * 2 * c.I * c.H, seed + 2, 0.4f),
          RandomVector(c.E * c.H * c.I, seed + 3, 0.4f)};
}

float Sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

struct Acts {
  std::vector<int32_t> offsets, sorted, slot_of;
  std::vector<float> xs, h, act, ys, y;  // (A,H) (A,2I) (A,I) (A,H) (T,H)
};

Acts Forward(const Case& c, const Params& p) {
  const int64_t T = c.T, E = c.E, k = c.k, H = c.H, I = c.I, A = T * k;
  Acts a;
  a.offsets.resize(E + 1), a.sorted.resize(A), a.slot_of.resize(A);
  a.xs.resize(A * H), a.h.resize(A * 2 * I), a.act.resize(A * I), a.ys.resize(A * H);
  a.y.resize(T * H);
  ops::moe_plan(a.offsets.data(), a.sorted.data(), a.slot_of.data(), c.idx.data(), T, E, k);
  ops::moe_permute(a.xs.data(), p.x.data(), a.sorted.data(), A, k, H);
  ops::grouped_linear_forward(a.h.data(), a.xs.data(), p.w1.data(), a.offsets.data(), E, H, 2 * I);
  for (int64_t r = 0; r < A; ++r)
    for (int64_t i = 0; i < I; ++i) {
      float g = a.h[r * 2 * I + i], u = a.h[r * 2 * I + I + i];
      a.act[r * I + i] = g * Sigmoid(g) * u;
    }
  ops::grouped_linear_forward(a.ys.data(), a.act.data(), p.w2.data(), a.offsets.data(), E, I, H);
  ops::moe_combine_forward(a.y.data(), a.ys.data(), p.topk_w.data(), a.slot_of.data(), T, k, H);
  return a;
}

struct Grads {
  std::vector<float> x, topk_w, w1, w2;
};

Grads Backward(const Case& c, const Params& p, const Acts& a, const std::vector<float>& dy) {
  const int64_t T = c.T, E = c.E, k = c.k, H = c.H, I = c.I, A = T * k;
  Grads g{std::vector<float>(T * H, 0.0f), std::vector<float>(T * k, NAN),
          std::vector<float>(E * 2 * I * H, 0.0f), std::vector<float>(E * H * I, 0.0f)};
  std::vector<float> dys(A * H, NAN), dact(A * I, NAN), dh(A * 2 * I), dxs(A * H, NAN);
  ops::moe_combine_backward(dys.data(), g.topk_w.data(), dy.data(), a.ys.data(), p.topk_w.data(),
                            a.slot_of.data(), T, k, H);
  ops::grouped_linear_backward(dact.data(), g.w2.data(), dys.data(), a.act.data(), p.w2.data(),
                               a.offsets.data(), E, I, H);
  for (int64_t r = 0; r < A; ++r)
    for (int64_t i = 0; i < I; ++i) {
      float gt = a.h[r * 2 * I + i], u = a.h[r * 2 * I + I + i], s = Sigmoid(gt);
      dh[r * 2 * I + I + i] = dact[r * I + i] * gt * s;
      dh[r * 2 * I + i] = dact[r * I + i] * u * s * (1.0f + gt * (1.0f - s));
    }
  ops::grouped_linear_backward(dxs.data(), g.w1.data(), dh.data(), a.xs.data(), p.w1.data(),
                               a.offsets.data(), E, H, 2 * I);
  ops::moe_permute_backward(g.x.data(), dxs.data(), a.slot_of.data(), T, k, H);
  return g;
}

// y (T, H) by a naive loop over each token's k experts, in double.
std::vector<double> Reference(const Case& c, const Params& p) {
  const int64_t H = c.H, I = c.I;
  std::vector<double> y(c.T * H, 0.0), h(2 * I), act(I);
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t j = 0; j < c.k; ++j) {
      const int64_t e = c.idx[t * c.k + j];
      const float* w1 = &p.w1[e * 2 * I * H];
      const float* w2 = &p.w2[e * H * I];
      for (int64_t i = 0; i < 2 * I; ++i) {
        h[i] = 0;
        for (int64_t d = 0; d < H; ++d) h[i] += double(w1[i * H + d]) * p.x[t * H + d];
      }
      for (int64_t i = 0; i < I; ++i) act[i] = h[i] / (1.0 + std::exp(-h[i])) * h[I + i];
      for (int64_t d = 0; d < H; ++d) {
        double o = 0;
        for (int64_t i = 0; i < I; ++i) o += double(w2[d * I + i]) * act[i];
        y[t * H + d] += double(p.topk_w[t * c.k + j]) * o;
      }
    }
  return y;
}

TEST(MoePath, ForwardMatchesNaivePerTokenLoop) {
  auto cases = AwkwardCases();
  cases.push_back({"bigger", 96, 8, 2, 64, 48, Routing(96, 2, Experts(8, 5), -1, 7)});
  for (const Case& c : cases) {
    Params p = MakeParams(c, 31);
    Acts a = Forward(c, p);
    std::vector<double> ref = Reference(c, p);
    EXPECT_LT(RelError(a.y.data(), ref.data(), c.T * c.H), 1e-5) << c.name;
  }
}

TEST(MoePath, BackwardMatchesFiniteDifferences) {
  for (const Case& c : AwkwardCases()) {
    Params p = MakeParams(c, 41);
    auto r = RandomVector(c.T * c.H, 42);
    Grads g = Backward(c, p, Forward(c, p), r);
    auto loss = [&] { return Dot(Forward(c, p).y.data(), r); };
    EXPECT_LT(GradCheck(p.x, g.x, loss), 2e-4) << c.name << " dx";
    EXPECT_LT(GradCheck(p.w1, g.w1, loss, 1e-2, 96), 2e-4) << c.name << " dw1";
    EXPECT_LT(GradCheck(p.w2, g.w2, loss, 1e-2, 96), 2e-4) << c.name << " dw2";
    EXPECT_LT(GradCheck(p.topk_w, g.topk_w, loss), 2e-4) << c.name << " dtopk_w";
  }
}

TEST(MoePath, WeightGradientsAccumulate) {
  const Case c = AwkwardCases()[1];  // has an empty expert
  Params p = MakeParams(c, 51);
  Acts a = Forward(c, p);
  auto dy = RandomVector(c.T * c.H, 52);
  const int64_t A = c.T * c.k;
  std::vector<float> dys(A * c.H), dtw(A), dact(A * c.I), dw2(c.E * c.H * c.I, 0.0f);
  ops::moe_combine_backward(dys.data(), dtw.data(), dy.data(), a.ys.data(), p.topk_w.data(),
                            a.slot_of.data(), c.T, c.k, c.H);
  ops::grouped_linear_backward(dact.data(), dw2.data(), dys.data(), a.act.data(), p.w2.data(),
                               a.offsets.data(), c.E, c.I, c.H);
  std::vector<float> once = dw2;
  ops::grouped_linear_backward(dact.data(), dw2.data(), dys.data(), a.act.data(), p.w2.data(),
                               a.offsets.data(), c.E, c.I, c.H);
  for (size_t i = 0; i < dw2.size(); ++i) ASSERT_EQ(dw2[i], 2.0f * once[i]) << i;
  for (int64_t i = 0; i < c.H * c.I; ++i) ASSERT_EQ(once[1 * c.H * c.I + i], 0.0f);  // expert 1
}

TEST(MoePath, DeterministicAcrossRunsAndThreadCounts) {
  const Case c{"det", 200, 8, 2, 64, 32, Routing(200, 2, Experts(8, 3), -1, 61)};
  Params p = MakeParams(c, 62);
  auto dy = RandomVector(c.T * c.H, 63);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Acts a = Forward(c, p);
    Grads g = Backward(c, p, a, dy);
    std::vector<float> all = a.y;
    for (const auto* v : {&g.x, &g.topk_w, &g.w1, &g.w2})
      all.insert(all.end(), v->begin(), v->end());
    return all;
  };
  int saved = omp_get_max_threads();
  auto r2a = run(2), r2b = run(2), r1 = run(1);
  omp_set_num_threads(saved);
  auto same = [](const std::vector<float>& u, const std::vector<float>& v) {
    return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * 4) == 0;
  };
  EXPECT_TRUE(same(r2a, r2b)) << "two runs differ";
  EXPECT_TRUE(same(r2a, r1)) << "1 and 2 threads differ";
}

}  // namespace
}  // namespace xt
