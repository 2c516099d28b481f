// StepMetrics JSON round trips, the dashboard scalars, the FLOPs/MFU/violation arithmetic, and
// metrics.jsonl: one line per step, truncation on resume, torn and damaged files.
#include "xtuner/train/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "util/testing.h"
#include "xtuner/core/json.h"
#include "xtuner/train/metrics_flops.h"
#include "xtuner/train/metrics_jsonl.h"

namespace xt {
namespace {

StepMetrics Sample(int64_t step) {
  StepMetrics m;
  m.step = step;
  m.loss = 2.5 + 0.001 * double(step);
  m.ce_loss = 2.4;
  m.aux_loss = 0.1;
  m.grad_norm = 1.25;
  m.lr = 1e-4;
  m.tokens = 4096;
  m.tokens_per_s = 1234.5;
  m.tflops = 0.25;
  m.mfu = StepMetrics::kNaN;  // peak unknown
  m.tokens_per_expert = {{1, 2, 3, 6}, {3, 3, 3, 3}};
  m.max_expert_violation = MaxExpertViolation(m.tokens_per_expert);
  m.max_expert_violation_worst = WorstLayerExpertViolation(m.tokens_per_expert);
  m.peak_memory_bytes = int64_t(3) << 30;
  m.masked_fraction = 0.375;
  m.skipped = step % 2 == 0;
  m.step_time_s = 0.5;
  m.elapsed_s = 0.5 * double(step);
  return m;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<int64_t> StepsIn(const std::string& path) {
  std::vector<int64_t> steps;
  std::istringstream in(ReadAll(path));
  for (std::string line; std::getline(in, line);) {
    steps.push_back(testing::Json(line).at("step").get<int64_t>());
  }
  return steps;
}

// ---- the record ----

TEST(StepMetrics, JsonHasEveryFieldAndNanIsNull) {
  const auto j = ToJson(Sample(3));
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  const std::vector<std::string> want = {"aux_loss",
                                         "ce_loss",
                                         "elapsed_s",
                                         "grad_norm",
                                         "loss",
                                         "lr",
                                         "masked_fraction",
                                         "max_expert_violation",
                                         "max_expert_violation_worst",
                                         "mfu",
                                         "peak_memory_bytes",
                                         "skipped",
                                         "step",
                                         "step_time_s",
                                         "tflops",
                                         "tokens",
                                         "tokens_per_expert",
                                         "tokens_per_s"};
  EXPECT_EQ(keys, want);  // nlohmann::json objects iterate in key order
  EXPECT_TRUE(j["mfu"].is_null());
  EXPECT_EQ(j["tokens_per_expert"], testing::Json("[[1,2,3,6],[3,3,3,3]]"));
  EXPECT_EQ(j["step"], 3);
  EXPECT_EQ(j["skipped"], false);
  EXPECT_EQ(DumpJson(j).find('\n'), std::string::npos);  // one line
}

TEST(StepMetrics, JsonRoundTrips) {
  const StepMetrics a = Sample(4);
  auto b = StepMetricsFromJson(testing::Json(DumpJson(ToJson(a))), "t");
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(b->step, a.step);
  EXPECT_EQ(b->loss, a.loss);  // doubles are dumped with round-trip precision
  EXPECT_EQ(b->lr, a.lr);
  EXPECT_EQ(b->tokens, a.tokens);
  EXPECT_TRUE(std::isnan(b->mfu));
  EXPECT_EQ(b->tokens_per_expert, a.tokens_per_expert);
  EXPECT_EQ(b->max_expert_violation, a.max_expert_violation);
  EXPECT_EQ(b->peak_memory_bytes, a.peak_memory_bytes);
  EXPECT_EQ(b->skipped, true);
  EXPECT_EQ(b->elapsed_s, a.elapsed_s);
}

TEST(StepMetrics, BadJsonNamesTheSourceAndKey) {
  auto bad = [](const char* text) {
    auto r = StepMetricsFromJson(testing::Json(text), "metrics.jsonl:7");
    EXPECT_FALSE(r.ok()) << text;
    return r.status().message();
  };
  EXPECT_EQ(bad(R"({"loss": 1})"), "metrics.jsonl:7: metrics record has no \"step\"");
  EXPECT_NE(bad(R"({"step": 1, "loss": "x"})").find("\"loss\" must be a number"),
            std::string::npos);
  EXPECT_NE(bad(R"({"step": 1.5})").find("\"step\" must be an integer"), std::string::npos);
  EXPECT_NE(bad(R"({"step": 1, "skipped": 1})").find("\"skipped\""), std::string::npos);
  EXPECT_NE(bad(R"({"step": 1, "tokens_per_expert": [1, 2]})").find("tokens_per_expert"),
            std::string::npos);
  EXPECT_NE(bad("[1]").find("must be a JSON object"), std::string::npos);
}

TEST(StepMetrics, ScalarsLeaveOutWhatDoesNotApply) {
  StepMetrics moe = Sample(1);
  moe.mfu = 0.42;
  std::vector<std::string> tags;
  for (const auto& [tag, v] : DashboardScalars(moe)) tags.push_back(tag);
  EXPECT_EQ(tags, (std::vector<std::string>{
                      "train/loss", "train/ce_loss", "train/aux_loss", "train/grad_norm",
                      "train/lr", "train/skipped", "perf/tokens_per_s", "perf/tflops", "perf/mfu",
                      "perf/step_time_s", "memory/peak_gib", "data/tokens", "data/masked_fraction",
                      "moe/maxvio", "moe/maxvio_worst_layer"}));
  EXPECT_EQ(DashboardScalars(moe)[10].second, 3.0);  // GiB

  StepMetrics dense = Sample(1);  // dense, mfu unknown, diverged
  dense.tokens_per_expert.clear();
  dense.loss = StepMetrics::kNaN;
  tags.clear();
  for (const auto& [tag, v] : DashboardScalars(dense)) tags.push_back(tag);
  EXPECT_EQ(tags, (std::vector<std::string>{"train/loss", "train/ce_loss", "train/grad_norm",
                                            "train/lr", "train/skipped", "perf/tokens_per_s",
                                            "perf/tflops", "perf/step_time_s", "memory/peak_gib",
                                            "data/tokens", "data/masked_fraction"}));
  EXPECT_TRUE(std::isnan(DashboardScalars(dense)[0].second));  // a NaN loss is shown, not hidden
}

// ---- the arithmetic ----

TEST(MetricsFlops, ExpertViolationFollowsXTuner) {
  EXPECT_EQ(ExpertViolation({5, 5, 5, 5}), 0.0);
  EXPECT_EQ(ExpertViolation({1, 2, 3, 6}), 1.0);  // max 6 / mean 3 - 1
  EXPECT_EQ(ExpertViolation({8, 0, 0, 0}), 3.0);  // all on one expert: E - 1
  EXPECT_EQ(ExpertViolation({0, 0, 0}), 0.0);     // no tokens: balanced by convention
  EXPECT_EQ(ExpertViolation({7}), 0.0);
  const std::vector<std::vector<int64_t>> layers = {{5, 5, 5, 5}, {8, 0, 0, 0}, {1, 2, 3, 6}};
  EXPECT_EQ(MaxExpertViolation(layers), (0.0 + 3.0 + 1.0) / 3);  // XTuner: mean over layers
  EXPECT_EQ(WorstLayerExpertViolation(layers), 3.0);
  EXPECT_EQ(MaxExpertViolation({}), 0.0);
  EXPECT_EQ(WorstLayerExpertViolation({}), 0.0);
}

TEST(MetricsFlops, ActiveParamsOfQwen3_30B_A3B) {
  // Qwen3-30B-A3B: vocab 151936, hidden 2048, 48 layers, 32 q heads and 4 kv heads of 128, q/k
  // norms, 128 experts of moe_intermediate 768, top-8, untied lm_head.
  const int64_t V = 151936, H = 2048, L = 48, D = 128, E = 128, I = 768;
  const int64_t attention = H * 32 * D + 2 * H * 4 * D + 32 * D * H + 2 * D;
  const int64_t expert = 3 * H * I;
  const int64_t layer = attention + 2 * H + E * H + E * expert;
  const int64_t total = 2 * V * H + H + L * layer;
  EXPECT_EQ(total, 30532122624);  // "30.5B" on the model card
  const int64_t active = MoeActiveParams(total, L, E, 8, expert);
  EXPECT_EQ(active, 3353032704);  // "3.3B activated"
  EXPECT_EQ(active, total - L * (E - 8) * expert);
  EXPECT_EQ(MoeActiveParams(1000, 0, 0, 0, 0), 1000);    // dense
  EXPECT_EQ(MoeActiveParams(1000, 2, 4, 4, 100), 1000);  // top-k = E: everything is active
}

TEST(MetricsFlops, TrainingFlopsConvention) {
  const int64_t N = 1000, L = 4, d = 64, S = 128;
  // PaLM's full-attention count per token: 6N + 12 L d S; causal halves the attention term.
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(N, L, d, S, /*causal=*/false), 6.0 * N + 12.0 * L * d * S);
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(N, L, d, S), 6.0 * N + 6.0 * L * d * S);
  // A packed row of two 64-token documents does half the attention of one 128-token document.
  const double one = TrainingStepFlops(N, 128, L, d, 128.0 * 128.0);
  const double two = TrainingStepFlops(N, 128, L, d, 2 * 64.0 * 64.0);
  EXPECT_DOUBLE_EQ(one - 6.0 * N * 128, 2 * (two - 6.0 * N * 128));
  // No attention (d = 0): exactly 6 N per token.
  EXPECT_DOUBLE_EQ(TrainingStepFlops(N, 10, L, 0, 100.0), 6.0 * N * 10);
  // Sliding windows: a 128-token document under a window of 32 keys has about
  // (128^2 - 96^2) / 2 causal pairs; one no longer than the window is unaffected.
  EXPECT_DOUBLE_EQ(WindowedLenSq(128, 32), 128.0 * 128 - 96.0 * 96);
  EXPECT_DOUBLE_EQ(WindowedLenSq(32, 32), 32.0 * 32);
  EXPECT_DOUBLE_EQ(WindowedLenSq(128, 0), 128.0 * 128);
  // Two of the four layers windowed: their attention term takes the windowed squares.
  EXPECT_DOUBLE_EQ(
      TrainingFlopsPerToken(N, L, d, S, true, 2, 32),
      6.0 * N + 12.0 * d * 0.5 * (2 * 128.0 * 128 + 2 * (128.0 * 128 - 96.0 * 96)) / S);
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(N, L, d, S, true, 2, 0),
                   TrainingFlopsPerToken(N, L, d, S));
}

TEST(MetricsFlops, Mfu) {
  // 8 devices, 8e15 FLOPs in 2 s: 5e14 FLOP/s each; on a 1e15 peak that is 50 %.
  const double per_device = AchievedFlopsPerDevice(8e15, 2.0, 8);
  EXPECT_DOUBLE_EQ(per_device, 5e14);
  EXPECT_DOUBLE_EQ(Mfu(per_device, 1e15), 0.5);
  EXPECT_TRUE(std::isnan(Mfu(per_device, 0)));  // peak unknown
  EXPECT_TRUE(std::isnan(AchievedFlopsPerDevice(1e15, 0, 1)));
  EXPECT_TRUE(std::isnan(AchievedFlopsPerDevice(1e15, 1, 0)));
}

// ---- metrics.jsonl ----

TEST(MetricsJsonl, OneFlushedLinePerStep) {
  const std::string path = testing::TempDir("jsonl") + "/metrics.jsonl";
  auto w = MetricsJsonl::Open(path, 0);
  ASSERT_TRUE(w.ok()) << w.status().message();
  for (int64_t s = 1; s <= 3; ++s) {
    ASSERT_TRUE((*w)->Append(Sample(s)).ok());
    EXPECT_EQ(StepsIn(path).size(), size_t(s));  // visible before the writer is closed
  }
  std::istringstream in(ReadAll(path));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, DumpJson(ToJson(Sample(1))));
}

TEST(MetricsJsonl, ResumeDropsTheStepsAfterTheCheckpoint) {
  const std::string path = testing::TempDir("jsonl") + "/metrics.jsonl";
  {
    auto w = MetricsJsonl::Open(path, 0);
    ASSERT_TRUE(w.ok());
    for (int64_t s = 1; s <= 6; ++s) ASSERT_TRUE((*w)->Append(Sample(s)).ok());
  }
  // Crash after step 6; the last checkpoint was step 4: steps 5 and 6 are trained again.
  auto w = MetricsJsonl::Open(path, 4);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ(StepsIn(path), (std::vector<int64_t>{1, 2, 3, 4}));
  ASSERT_TRUE((*w)->Append(Sample(5)).ok());
  EXPECT_EQ(StepsIn(path), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  w->reset();
  // A fresh run in the same work_dir starts an empty file.
  ASSERT_TRUE(MetricsJsonl::Open(path, 0).ok());
  EXPECT_EQ(ReadAll(path), "");
}

TEST(MetricsJsonl, TornLastLineIsRemoved) {
  const std::string dir = testing::TempDir("jsonl");
  const std::string l1 = DumpJson(ToJson(Sample(1))) + "\n",
                    l2 = DumpJson(ToJson(Sample(2))) + "\n";
  WriteAll(dir + "/a", l1 + l2 + l2.substr(0, 20));  // crash mid-line: no newline
  ASSERT_TRUE(TruncateAfterStep(dir + "/a", 100).ok());
  EXPECT_EQ(ReadAll(dir + "/a"), l1 + l2);
  WriteAll(dir + "/b", l1 + "{\"step\": 2, \"lo\n");  // torn, then a newline
  ASSERT_TRUE(TruncateAfterStep(dir + "/b", 100).ok());
  EXPECT_EQ(ReadAll(dir + "/b"), l1);
  ASSERT_TRUE(TruncateAfterStep(dir + "/missing", 1).ok());  // nothing to cut
  WriteAll(dir + "/c", l1 + l2);
  ASSERT_TRUE(TruncateAfterStep(dir + "/c", 2).ok());  // nothing after step 2
  EXPECT_EQ(ReadAll(dir + "/c"), l1 + l2);
}

TEST(MetricsJsonl, DamagedFileIsNotTruncated) {
  const std::string path = testing::TempDir("jsonl") + "/metrics.jsonl";
  const std::string text =
      DumpJson(ToJson(Sample(1))) + "\nnot json\n" + DumpJson(ToJson(Sample(3))) + "\n";
  WriteAll(path, text);
  Status st = TruncateAfterStep(path, 1);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message(), path +
                              ":2: not a metrics record (a JSON object with an integer \"step\"),"
                              " and more lines follow; refusing to truncate");
  EXPECT_EQ(ReadAll(path), text);  // untouched
  EXPECT_FALSE(MetricsJsonl::Open(path, 1).ok());
}

TEST(MetricsJsonl, UnwritableDirectoryIsNamed) {
  const std::string path = testing::TempDir("jsonl") + "/no/such/dir/metrics.jsonl";
  auto w = MetricsJsonl::Open(path, 0);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().message().rfind(path + ": cannot open for appending", 0), 0u)
      << w.status().message();
}

}  // namespace
}  // namespace xt
