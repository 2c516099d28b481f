// Learning-rate schedules against transformers' get_*_schedule_with_warmup at every step
// (tests/data/optim/lr_schedules.json, made by tools/optim/torch_reference.py), and config
// validation.
#include "xtuner/optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/testing.h"

namespace xt {
namespace {

TEST(LrSchedule, MatchesTransformersAtEveryStep) {
  std::ifstream f(testing::DataPath("optim/lr_schedules.json"));
  ASSERT_TRUE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  auto ref = testing::Json(ss.str());
  int hf_cases = 0;
  for (const auto& c : ref["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto& j = c["config"];
    LrScheduleConfig cfg;
    cfg.type = ParseLrScheduleType(j["type"]).value();
    cfg.lr = j["lr"];
    cfg.min_lr = j["min_lr"];
    cfg.total_steps = j["total_steps"];
    cfg.warmup_steps = j["warmup_steps"];
    cfg.warmup_ratio = j["warmup_ratio"];
    cfg.warmup_start_factor = j["warmup_start_factor"];
    auto sched = LrSchedule::Create(cfg);
    ASSERT_TRUE(sched.ok()) << sched.status().message();
    const auto want = c["lrs"].get<std::vector<double>>();
    ASSERT_EQ(want.size(), size_t(cfg.total_steps + 1));
    for (size_t s = 0; s < want.size(); ++s)
      EXPECT_NEAR(sched->lr(s), want[s], 1e-15 * cfg.lr) << "step " << s;
    // Past the end every schedule holds its final value.
    EXPECT_EQ(sched->lr(cfg.total_steps + 5), sched->lr(cfg.total_steps));
    hf_cases += c["source"].get<std::string>().starts_with("transformers");
  }
  EXPECT_GE(hf_cases, 14);
}

TEST(LrSchedule, WarmupRatioRoundsUpLikeTransformers) {
  LrScheduleConfig cfg;
  cfg.total_steps = 100;
  cfg.warmup_ratio = 0.07;  // 7.000000000000001 in double
  EXPECT_EQ(LrSchedule::Create(cfg)->warmup_steps(), 8);
  cfg.warmup_ratio = 0.1;
  EXPECT_EQ(LrSchedule::Create(cfg)->warmup_steps(), 10);
  cfg.warmup_ratio = 1.0;
  EXPECT_EQ(LrSchedule::Create(cfg)->warmup_steps(), 100);
}

TEST(LrSchedule, StartFactorAndFloor) {
  LrScheduleConfig cfg;
  cfg.type = LrScheduleType::kLinear;
  cfg.lr = 1.0;
  cfg.min_lr = 0.25;
  cfg.total_steps = 10;
  cfg.warmup_steps = 4;
  cfg.warmup_start_factor = 0.2;
  auto s = LrSchedule::Create(cfg).value();
  EXPECT_DOUBLE_EQ(s.lr(0), 0.2);
  EXPECT_DOUBLE_EQ(s.lr(2), 0.6);
  EXPECT_DOUBLE_EQ(s.lr(4), 1.0);
  EXPECT_DOUBLE_EQ(s.lr(7), 0.25 + 0.75 * 0.5);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.25);
  EXPECT_DOUBLE_EQ(s.lr(1000), 0.25);
  cfg.type = LrScheduleType::kCosine;
  s = LrSchedule::Create(cfg).value();
  EXPECT_DOUBLE_EQ(s.lr(7), 0.25 + 0.75 * 0.5);  // halfway: cos(pi/2) = 0
  EXPECT_DOUBLE_EQ(s.lr(10), 0.25);
  EXPECT_DOUBLE_EQ(s.lr(13), 0.25);  // HF's cosine would rise again here
  cfg.type = LrScheduleType::kConstant;
  s = LrSchedule::Create(cfg).value();
  EXPECT_DOUBLE_EQ(s.lr(9), 1.0);
}

TEST(LrSchedule, ParseTypeListsTheSupportedOnes) {
  EXPECT_EQ(ParseLrScheduleType("cosine").value(), LrScheduleType::kCosine);
  EXPECT_EQ(ParseLrScheduleType("linear").value(), LrScheduleType::kLinear);
  EXPECT_EQ(ParseLrScheduleType("constant").value(), LrScheduleType::kConstant);
  auto r = ParseLrScheduleType("cosine_with_restarts");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "lr schedule: unknown type 'cosine_with_restarts' (supported: cosine, linear, "
            "constant)");
}

TEST(LrSchedule, CreateNamesTheBadField) {
  auto err = [](auto edit) {
    LrScheduleConfig cfg;
    cfg.total_steps = 100;
    edit(cfg);
    auto r = LrSchedule::Create(cfg);
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.status().message();
  };
  auto has = [](const std::string& msg, const std::string& part) {
    return msg.find(part) != std::string::npos;
  };
  EXPECT_PRED2(has, err([](auto& c) { c.lr = -1; }), "lr = -1 must be >= 0");
  EXPECT_PRED2(has, err([](auto& c) { c.lr = NAN; }), "lr = nan");
  EXPECT_PRED2(has, err([](auto& c) { c.min_lr = -1e-5; }), "min_lr = -1e-05");
  EXPECT_PRED2(has, err([](auto& c) { c.min_lr = 0.1; }), "min_lr = 0.1 is larger than lr");
  EXPECT_PRED2(has, err([](auto& c) { c.total_steps = 0; }), "total_steps = 0 must be >= 1");
  EXPECT_PRED2(has, err([](auto& c) { c.total_steps = -3; }), "total_steps = -3");
  EXPECT_PRED2(has, err([](auto& c) { c.warmup_steps = -1; }), "warmup_steps = -1 must be >= 0");
  EXPECT_PRED2(has, err([](auto& c) { c.warmup_steps = 101; }),
               "warmup_steps = 101 is more than total_steps = 100");
  EXPECT_PRED2(has, err([](auto& c) { c.warmup_ratio = 1.5; }), "warmup_ratio = 1.5");
  EXPECT_PRED2(has, err([](auto& c) { c.warmup_steps = 5, c.warmup_ratio = 0.1; }), "not both");
  EXPECT_PRED2(has, err([](auto& c) { c.warmup_start_factor = 2; }), "warmup_start_factor = 2");
  // The edges are fine.
  LrScheduleConfig ok;
  ok.total_steps = 1;
  ok.warmup_steps = 1;
  ok.min_lr = ok.lr;
  EXPECT_TRUE(LrSchedule::Create(ok).ok());
  ok.lr = ok.min_lr = 0;
  EXPECT_TRUE(LrSchedule::Create(ok).ok());
}

}  // namespace
}  // namespace xt
