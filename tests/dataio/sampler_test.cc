#include "xtuner/data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "util/testing.h"
#include "xtuner/core/json.h"

namespace xt {
namespace {

Sampler Make(int64_t num_rows, int64_t gbs, int64_t world, int64_t rank, uint64_t seed) {
  auto s = Sampler::Create(num_rows, {gbs, world, rank, seed});
  EXPECT_TRUE(s.ok()) << s.status().message();
  return std::move(s).value();
}

// The global batches of `steps` steps, as one rank of one sees them.
std::vector<std::vector<int64_t>> RunSteps(Sampler& s, int steps) {
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < steps; ++i) out.push_back(s.Next());
  return out;
}

TEST(Sampler, BatchesAreTheSameForAnyNumberOfRanks) {
  const int64_t rows = 37, gbs = 8;  // 37 rows: batches straddle epoch ends
  Sampler one = Make(rows, gbs, 1, 0, 5);
  const auto reference = RunSteps(one, 30);
  for (int64_t R : {2, 4, 8}) {
    std::vector<Sampler> ranks;
    for (int64_t r = 0; r < R; ++r) ranks.push_back(Make(rows, gbs, R, r, 5));
    for (int step = 0; step < 30; ++step) {
      std::vector<int64_t> concat;
      for (auto& s : ranks) {
        std::vector<int64_t> share = s.Next();
        ASSERT_EQ(int64_t(share.size()), gbs / R);
        concat.insert(concat.end(), share.begin(), share.end());
      }
      ASSERT_EQ(concat, reference[step]) << R << " ranks, step " << step;
    }
  }
}

TEST(Sampler, EveryEpochVisitsEveryRowOnceInANewOrder) {
  const int64_t rows = 24, gbs = 6;
  Sampler s = Make(rows, gbs, 1, 0, 9);
  std::vector<int64_t> stream;
  for (int step = 0; step < 4 * rows / gbs; ++step) {
    auto b = s.Next();
    stream.insert(stream.end(), b.begin(), b.end());
  }
  EXPECT_EQ(s.epoch(), 4);
  EXPECT_EQ(s.position(), 0);
  EXPECT_EQ(s.step(), 16);
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 4; ++e) {
    std::vector<int64_t> order(stream.begin() + e * rows, stream.begin() + (e + 1) * rows);
    epochs.push_back(order);
    std::sort(order.begin(), order.end());
    for (int64_t i = 0; i < rows; ++i) ASSERT_EQ(order[i], i);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);

  // Wrap: with 10 rows and batches of 4, step 2 holds the last 2 rows of epoch 0 and the first 2
  // of epoch 1; nothing is dropped.
  Sampler w = Make(10, 4, 1, 0, 9);
  std::vector<int64_t> seen;
  for (int step = 0; step < 5; ++step) {  // 20 rows = exactly 2 epochs
    auto b = w.Next();
    ASSERT_EQ(b.size(), 4u);
    seen.insert(seen.end(), b.begin(), b.end());
  }
  for (int e = 0; e < 2; ++e) {
    std::vector<int64_t> part(seen.begin() + 10 * e, seen.begin() + 10 * (e + 1));
    std::sort(part.begin(), part.end());
    for (int64_t i = 0; i < 10; ++i) ASSERT_EQ(part[i], i);
  }

  // Fewer rows than a batch: the batch spans epochs.
  Sampler tiny = Make(3, 8, 2, 1, 0);
  EXPECT_EQ(tiny.Next().size(), 4u);
  EXPECT_EQ(tiny.epoch(), 2);
  EXPECT_EQ(tiny.position(), 2);
}

TEST(Sampler, DeterministicBySeed) {
  Sampler a = Make(100, 10, 1, 0, 1), b = Make(100, 10, 1, 0, 1), c = Make(100, 10, 1, 0, 2);
  auto ra = RunSteps(a, 25), rb = RunSteps(b, 25), rc = RunSteps(c, 25);
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
}

TEST(Sampler, ResumesExactly) {
  const int64_t rows = 53, gbs = 12;
  for (int save_at : {0, 1, 4, 9, 17}) {
    Sampler straight = Make(rows, gbs, 4, 3, 77);
    const auto all = RunSteps(straight, 30);

    Sampler first = Make(rows, gbs, 4, 3, 77);
    RunSteps(first, save_at);
    const std::string saved = DumpJson(first.state().ToJson());

    // A fresh process: parse, restore, continue.
    auto state = SamplerState::FromJson(testing::Json(saved), "ckpt/sampler.json");
    ASSERT_TRUE(state.ok()) << state.status().message();
    EXPECT_EQ(*state, first.state());
    Sampler resumed = Make(rows, gbs, 4, 3, 77);
    ASSERT_TRUE(resumed.Restore(*state).ok());
    EXPECT_EQ(resumed.step(), save_at);
    for (int step = save_at; step < 30; ++step) {
      ASSERT_EQ(resumed.Next(), all[step]) << "saved at " << save_at << ", step " << step;
    }

    // Resuming on another number of ranks continues the same global batches.
    Sampler one = Make(rows, gbs, 1, 0, 77);
    ASSERT_TRUE(one.Restore(*state).ok());
    Sampler one_straight = Make(rows, gbs, 1, 0, 77);
    const auto all_one = RunSteps(one_straight, 30);
    for (int step = save_at; step < 30; ++step) ASSERT_EQ(one.Next(), all_one[step]);
  }
}

TEST(Sampler, Errors) {
  auto expect_error = [](int64_t rows, SamplerOptions o, const std::string& what) {
    auto s = Sampler::Create(rows, o);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find(what), std::string::npos) << s.status().message();
  };
  expect_error(10, {6, 4, 0, 0}, "not divisible by the 4 data-parallel ranks");
  expect_error(10, {8, 4, 4, 0}, "rank 4 outside [0, 4)");
  expect_error(10, {8, 4, -1, 0}, "rank -1");
  expect_error(10, {0, 1, 0, 0}, "global_batch_rows must be >= 1");
  expect_error(10, {8, 0, 0, 0}, "world_size");
  expect_error(0, {8, 1, 0, 0}, "no rows");

  Sampler s = Make(20, 4, 1, 0, 3);
  RunSteps(s, 3);
  const SamplerState good = s.state();
  auto restore_error = [&](SamplerState st, const std::string& what) {
    Sampler fresh = Make(20, 4, 1, 0, 3);
    Status r = fresh.Restore(st);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.message().find(what), std::string::npos) << r.message();
    EXPECT_EQ(fresh.step(), 0);  // unchanged
  };
  SamplerState st = good;
  st.seed = 4;
  restore_error(st, "seed 4");
  st = good;
  st.num_rows = 21;
  restore_error(st, "21 packed rows");
  st = good;
  st.global_batch_rows = 2;
  restore_error(st, "global_batch_rows 2");
  st = good;
  st.position = 20;
  restore_error(st, "outside [0, 20)");
  st = good;
  st.position = 13;
  restore_error(st, "not at a batch boundary");
  st = good;
  st.epoch = INT64_MAX / 2;
  restore_error(st, "impossibly large");

  auto parse_error = [](const std::string& text, const std::string& what) {
    auto r = SamplerState::FromJson(testing::Json(text), "ckpt/sampler.json");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("ckpt/sampler.json"), std::string::npos);
  };
  parse_error("[]", "must be a JSON object");
  parse_error(R"({"num_rows": 1, "global_batch_rows": 1, "epoch": 0, "position": 0})", "seed");
  parse_error(R"({"seed": 1, "num_rows": 1, "global_batch_rows": 1, "epoch": 0})", "position");
  parse_error(R"({"seed": 1, "num_rows": 1, "global_batch_rows": 1, "epoch": -1, "position": 0})",
              "\"epoch\" must be a non-negative integer");
  parse_error(R"({"seed": 1, "num_rows": "1", "global_batch_rows": 1, "epoch": 0, "position": 0})",
              "num_rows");
}

}  // namespace
}  // namespace xt
