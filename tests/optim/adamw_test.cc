// AdamW against torch.optim.AdamW trajectories (tests/data/optim/adamw_reference.json, made by
// tools/optim/torch_reference.py), and its own contracts: default decay ranges, sharding,
// thread-count independence, state restore, validation.
#include "xtuner/optim/adamw.h"

#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/testing.h"
#include "xtuner/model/config.h"
#include "xtuner/optim/clip.h"

namespace xt {
namespace {

using testing::RandomVector;

nlohmann::json LoadJson(const std::string& rel) {
  std::ifstream f(testing::DataPath(rel));
  EXPECT_TRUE(f.good()) << rel;
  std::stringstream ss;
  ss << f.rdbuf();
  return testing::Json(ss.str());
}

std::vector<float> Floats(const nlohmann::json& j) { return j.get<std::vector<float>>(); }

// Largest |a - b| / max(|b|, floor) over the elements.
double MaxRel(const std::vector<float>& a, const std::vector<float>& b, double floor) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst =
        std::max(worst, std::abs(double(a[i]) - b[i]) / std::max(std::abs(double(b[i])), floor));
  return worst;
}

TEST(AdamW, MatchesTorchAdamWTrajectories) {
  auto ref = LoadJson("optim/adamw_reference.json");
  ASSERT_GE(ref["cases"].size(), 3u);
  for (const auto& c : ref["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    AdamWConfig cfg{c["beta1"], c["beta2"], c["eps"], c["weight_decay"]};
    std::vector<DecayRange> ranges;
    for (const auto& r : c["ranges"]) ranges.push_back({r[0], r[1], r[2]});
    const int64_t n = c["n"];
    auto opt = AdamW::Create(cfg, ranges, n);
    ASSERT_TRUE(opt.ok()) << opt.status().message();
    auto p = Floats(c["params0"]);
    auto prev_ref = p;
    for (size_t s = 0; s < c["lrs"].size(); ++s) {
      auto g = Floats(c["grads"][s]);
      const auto want = Floats(c["params"][s]);
      opt->Step(p.data(), g.data(), c["lrs"][s].get<double>());
      EXPECT_EQ(opt->step(), int64_t(s + 1));
      // Parameters to 1e-6 relative, element by element, and the update itself (p_s - p_{s-1},
      // a small part of p) to 1e-5 relative.
      EXPECT_LT(MaxRel(p, want, 1e-3), 1e-6) << "step " << s;
      std::vector<float> du(n), dw(n);
      for (int64_t i = 0; i < n; ++i) du[i] = p[i] - prev_ref[i], dw[i] = want[i] - prev_ref[i];
      if (std::any_of(dw.begin(), dw.end(), [](float x) { return x != 0; })) {
        EXPECT_LT(testing::RelError(du.data(), dw.data(), n), 1e-5) << "step " << s;
      }
      p = want;  // continue from torch's parameters: each step is checked on its own
      prev_ref = want;
    }
    const float* m = opt->exp_avg().f32();
    const float* v = opt->exp_avg_sq().f32();
    // The moments (norm-wise: m can cancel to near 0, where one rounding is a large part).
    EXPECT_LT(testing::RelError(m, Floats(c["exp_avg"]).data(), n), 1e-6);
    EXPECT_LT(testing::RelError(v, Floats(c["exp_avg_sq"]).data(), n), 1e-6);
  }
}

TEST(AdamW, DefaultDecayRangesSkipNormsAndBiases) {
  auto cfg = ModelConfig::Load(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ParamLayout layout(*cfg);
  auto ranges = DefaultDecayRanges(layout);
  int64_t next = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    EXPECT_EQ(ranges[i].offset, next);
    if (i > 0) {
      EXPECT_NE(ranges[i].weight_decay, ranges[i - 1].weight_decay);  // merged
    }
    next += ranges[i].numel;
  }
  EXPECT_EQ(next, layout.total());
  auto decayed = [&](int64_t off) {
    for (const auto& r : ranges)
      if (off >= r.offset && off < r.offset + r.numel) return r.weight_decay;
    ADD_FAILURE() << "offset " << off << " in no range";
    return false;
  };
  int norms = 0;
  for (const ParamInfo& p : layout.params()) {
    EXPECT_EQ(decayed(p.offset), !p.is_norm) << p.name;
    EXPECT_EQ(decayed(p.offset + NumElements(p.shape) - 1), !p.is_norm) << p.name;
    norms += p.is_norm;
  }
  EXPECT_GT(norms, 0);
  EXPECT_TRUE(AdamW::Create({}, ranges, layout.total()).ok());
}

// A slab of 3 ranges over n elements, random params and a few steps of random gradients.
struct Slab {
  static constexpr int64_t n = 5000;
  std::vector<DecayRange> ranges = {{0, 1200, true}, {1200, 37, false}, {1237, n - 1237, true}};
  std::vector<float> p0 = RandomVector(n, 7);
  std::vector<std::vector<float>> grads = {RandomVector(n, 8), RandomVector(n, 9, 0.1f),
                                           RandomVector(n, 10, 3.0f), RandomVector(n, 11)};
  std::vector<double> lrs = {1e-3, 2e-2, 5e-3, 1e-2};
};

TEST(AdamW, ShardsAndThreadCountsGiveIdenticalBits) {
  Slab run;
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  auto full = AdamW::Create(cfg, run.ranges, run.n).value();
  auto p_full = run.p0;
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  for (size_t s = 0; s < run.grads.size(); ++s)
    full.Step(p_full.data(), run.grads[s].data(), run.lrs[s]);
  omp_set_num_threads(2);
  // Three shards, boundaries inside ranges and on one.
  const int64_t cuts[] = {0, 700, 1237, run.n};
  auto p_sh = run.p0;
  for (int k = 0; k < 3; ++k) {
    auto opt = AdamW::Create(cfg, run.ranges, run.n, cuts[k], cuts[k + 1]).value();
    EXPECT_EQ(opt.numel(), cuts[k + 1] - cuts[k]);
    for (size_t s = 0; s < run.grads.size(); ++s)
      opt.Step(p_sh.data() + cuts[k], run.grads[s].data() + cuts[k], run.lrs[s]);
    EXPECT_EQ(0, std::memcmp(opt.exp_avg().f32(), full.exp_avg().f32() + cuts[k], 4 * opt.numel()));
  }
  omp_set_num_threads(saved_threads);
  EXPECT_EQ(0, std::memcmp(p_full.data(), p_sh.data(), 4 * run.n));
}

TEST(AdamW, RestoredStateContinuesBitIdentically) {
  Slab run;
  auto a = AdamW::Create({}, run.ranges, run.n).value();
  auto pa = run.p0;
  for (size_t s = 0; s < 2; ++s) a.Step(pa.data(), run.grads[s].data(), run.lrs[s]);
  // "Save": clone the state tensors, as a checkpoint would.
  Tensor m = a.exp_avg().Clone();
  Tensor v = a.exp_avg_sq().Clone().Reshape(Shape{50, 100});
  const int64_t step = a.step();
  auto pb = pa;
  for (size_t s = 2; s < 4; ++s) a.Step(pa.data(), run.grads[s].data(), run.lrs[s]);

  auto b = AdamW::Create({}, run.ranges, run.n).value();
  ASSERT_TRUE(b.Restore(m, v, step).ok());
  EXPECT_EQ(b.step(), 2);
  for (size_t s = 2; s < 4; ++s) b.Step(pb.data(), run.grads[s].data(), run.lrs[s]);
  EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), 4 * run.n));
  EXPECT_EQ(0, std::memcmp(a.exp_avg_sq().f32(), b.exp_avg_sq().f32(), 4 * run.n));
}

TEST(AdamW, RestoreRejectsWrongStateAndKeepsItsOwn) {
  auto opt = AdamW::Create({}, {{0, 10, true}}, 10).value();
  Tensor ok = Tensor::Zeros(DType::F32, {10});
  auto st = opt.Restore(Tensor::Zeros(DType::F32, {11}), ok, 3);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("exp_avg"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("10 elements"), std::string::npos) << st.message();
  st = opt.Restore(ok, Tensor::Zeros(DType::BF16, {10}), 3);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("exp_avg_sq"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("BF16"), std::string::npos) << st.message();
  EXPECT_FALSE(opt.Restore(ok, ok, -1).ok());
  EXPECT_EQ(opt.step(), 0);
}

TEST(AdamW, CreateNamesBadConfigRangesAndShards) {
  auto err = [](const AdamWConfig& c, std::vector<DecayRange> r, int64_t total, int64_t b = 0,
                int64_t e = -1) {
    auto res = AdamW::Create(c, std::move(r), total, b, e);
    EXPECT_FALSE(res.ok());
    return res.ok() ? std::string() : res.status().message();
  };
  AdamWConfig bad;
  bad.beta1 = 1.0;
  EXPECT_NE(err(bad, {{0, 4, true}}, 4).find("beta1 = 1"), std::string::npos);
  bad = {};
  bad.beta2 = -0.1;
  EXPECT_NE(err(bad, {{0, 4, true}}, 4).find("beta2"), std::string::npos);
  bad = {};
  bad.eps = NAN;
  EXPECT_NE(err(bad, {{0, 4, true}}, 4).find("eps"), std::string::npos);
  bad = {};
  bad.weight_decay = -1;
  EXPECT_NE(err(bad, {{0, 4, true}}, 4).find("weight_decay"), std::string::npos);

  EXPECT_NE(err({}, {{0, 4, true}, {6, 4, false}}, 10).find("elements [4, 6) are in no"),
            std::string::npos);
  EXPECT_NE(err({}, {{0, 4, true}}, 10).find("elements [4, 10) are in no"), std::string::npos);
  EXPECT_NE(err({}, {{0, 6, true}, {4, 6, false}}, 10).find("[4, 10) overlaps"), std::string::npos);
  EXPECT_NE(err({}, {{0, 12, true}}, 10).find("not inside the slab [0, 10)"), std::string::npos);
  EXPECT_NE(err({}, {{0, 10, true}}, 10, 4, 12).find("shard [4, 12)"), std::string::npos);
  // Ranges in any order are fine, and an empty shard too.
  EXPECT_TRUE(AdamW::Create({}, {{6, 4, false}, {0, 6, true}}, 10).ok());
  EXPECT_TRUE(AdamW::Create({}, {{0, 10, true}}, 10, 5, 5).ok());
}

TEST(AdamW, NoDecayRangesAndZeroLrLeaveParametersAlone) {
  // lr = 0: no change anywhere (decay factor 1 - 0 * wd = 1), but the moments move.
  auto opt = AdamW::Create({0.9, 0.999, 1e-8, 0.5}, {{0, 3, false}, {3, 3, true}}, 6).value();
  std::vector<float> p = {1, 2, 3, 4, 5, 6}, g = {1, 1, 1, 1, 1, 1}, p0 = p;
  opt.Step(p.data(), g.data(), 0.0);
  EXPECT_EQ(p, p0);
  EXPECT_FLOAT_EQ(opt.exp_avg().f32()[0], 0.1f);
  // Zero gradient, lr > 0: only the decayed range shrinks, by exactly 1 - lr * wd (m = 0.09
  // still moves every element by the same Adam step).
  std::vector<float> z(6, 0.0f);
  auto q = AdamW::Create({0.9, 0.999, 1e-8, 0.5}, {{0, 3, false}, {3, 3, true}}, 6).value();
  q.Step(p.data(), z.data(), 0.1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(p[i], p0[i]) << i;  // m = v = 0: update 0 / eps = 0
  for (int i = 3; i < 6; ++i) EXPECT_EQ(p[i], p0[i] * float(1 - 0.1 * 0.5)) << i;
}

// Frozen ranges (a LoRA run's base weights): not updated even with a gradient, weight decay and
// eps 0 (where an update of zero moments would be 0 / 0), their moments never written, so those
// pages of the moments are never committed; the rest steps as without them. DefaultDecayRanges
// marks them from ParamInfo::frozen.
TEST(AdamW, FrozenRangesAreNeitherUpdatedNorCommitted) {
  const int64_t n = 1 << 20, t0 = 4096, t1 = 8192;  // elements [t0, t1) train
  const std::vector<DecayRange> ranges = {
      {0, t0, true, true}, {t0, t1 - t0, true, false}, {t1, n - t1, true, true}};
  auto opt = AdamW::Create({0.9, 0.999, 0.0, 0.1}, ranges, n);
  ASSERT_TRUE(opt.ok()) << opt.status().message();
  auto plain = AdamW::Create({0.9, 0.999, 0.0, 0.1}, {{0, t1 - t0, true}}, t1 - t0);
  ASSERT_TRUE(plain.ok());
  std::vector<float> p = RandomVector(n, 1), g = RandomVector(n, 2), p0 = p;
  std::vector<float> q(p.begin() + t0, p.begin() + t1);
  for (int s = 0; s < 3; ++s) {
    opt->Step(p.data(), g.data(), 1e-2);
    plain->Step(q.data(), g.data() + t0, 1e-2);
  }
  for (int64_t i = 0; i < n; ++i) {
    if (i >= t0 && i < t1) {
      ASSERT_EQ(p[i], q[i - t0]) << i;
    } else {
      ASSERT_EQ(p[i], p0[i]) << i;
    }
  }
  const int64_t page = sysconf(_SC_PAGESIZE);
  for (const Tensor& m : {opt->exp_avg(), opt->exp_avg_sq()})
    EXPECT_LE(testing::ResidentBytes(m.data(), n * 4), (t1 - t0) * 4 + 2 * page);

  nlohmann::json j = {{"model_type", "qwen3"},  {"vocab_size", 16},         {"hidden_size", 8},
                      {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"head_dim", 4},
                      {"intermediate_size", 8}};
  auto cfg = ModelConfig::FromJson(j, "tiny");
  ASSERT_TRUE(cfg.ok());
  cfg->lora.rank = 2;
  cfg->lora.alpha = 2;
  cfg->lora.targets = {"q_proj"};
  const ParamLayout layout(*cfg);
  int64_t frozen = 0, trained = 0;
  for (const DecayRange& d : DefaultDecayRanges(layout)) (d.frozen ? frozen : trained) += d.numel;
  EXPECT_EQ(trained, 2 * 8 + 8 * 2);  // q_proj's A (2, 8) and B (8, 2)
  EXPECT_EQ(frozen + trained, layout.total());
}

// Clipping through grad_scale: the step of the gradients scaled first (as scale_grads did),
// bit for bit, and the gradients stay as they were. Also a plain scalar loop of torch's
// arithmetic, to pin the vectorized update to it.
TEST(AdamW, GradScaleIsTheStepOfScaledGradientsAndLeavesThemAlone) {
  Slab run;
  const float coef = 0.37f;
  auto a = AdamW::Create({0.9, 0.95, 1e-8, 0.1}, run.ranges, run.n).value();
  auto b = AdamW::Create({0.9, 0.95, 1e-8, 0.1}, run.ranges, run.n).value();
  auto pa = run.p0, pb = run.p0;
  for (size_t s = 0; s < run.grads.size(); ++s) {
    const std::vector<float> g = run.grads[s];
    a.Step(pa.data(), g.data(), run.lrs[s], coef);
    EXPECT_EQ(g, run.grads[s]);
    std::vector<float> scaled = g;
    scale_grads(scaled.data(), run.n, coef);
    b.Step(pb.data(), scaled.data(), run.lrs[s]);
    EXPECT_EQ(0, std::memcmp(pa.data(), pb.data(), 4 * run.n)) << "step " << s;
  }
  // One step of an undecayed run, element by element in scalar float.
  auto c = AdamW::Create({0.9, 0.95, 1e-8, 0.0}, {{0, run.n, false}}, run.n).value();
  std::vector<float> p = run.p0, want = run.p0;
  c.Step(p.data(), run.grads[0].data(), 1e-3, coef);
  const float w1 = float(1 - 0.9), w2 = float(1 - 0.95);
  const float bc2_sqrt = float(std::pow(1 - 0.95, 0.5)), step = float(-(1e-3 / (1 - 0.9)));
  for (int64_t i = 0; i < run.n; ++i) {
    const float g = run.grads[0][i] * coef;
    volatile float m = 0.0f + w1 * (g - 0.0f);
    volatile float v = 0.0f * float(0.95) + w2 * g * g;
    const float denom = std::sqrt(float(v)) / bc2_sqrt + float(1e-8);
    want[i] = want[i] + step * float(m) / denom;
  }
  EXPECT_EQ(0, std::memcmp(p.data(), want.data(), 4 * run.n));
}

}  // namespace
}  // namespace xt
