// The progress display's exact output in both styles, the ETA, the run summary block and the
// human-readable number formats.
#include "xtuner/train/progress.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "xtuner/train/progress_format.h"
#include "xtuner/train/progress_summary.h"

namespace xt {
namespace {

// A FILE* whose contents the test can read (open_memstream).
class Capture {
 public:
  Capture() { f_ = open_memstream(&buf_, &size_); }
  ~Capture() {
    std::fclose(f_);
    std::free(buf_);
  }
  std::FILE* file() { return f_; }
  std::string text() {
    std::fflush(f_);
    return std::string(buf_, size_);
  }

 private:
  std::FILE* f_;
  char* buf_ = nullptr;
  size_t size_ = 0;
};

StepMetrics Step(int64_t step, double loss, double step_time = 1.0) {
  StepMetrics m;
  m.step = step;
  m.loss = loss;
  m.lr = 1e-4;
  m.tokens_per_s = 1234.4;
  m.step_time_s = step_time;
  m.elapsed_s = double(step) * step_time;
  return m;
}

// ---- formats ----

TEST(ProgressFormat, HumanCount) {
  EXPECT_EQ(HumanCount(0), "0");
  EXPECT_EQ(HumanCount(999), "999");
  EXPECT_EQ(HumanCount(999.6), "1.0K");
  EXPECT_EQ(HumanCount(1234), "1.2K");
  EXPECT_EQ(HumanCount(1.2e6), "1.2M");
  EXPECT_EQ(HumanCount(999960), "1.0M");
  EXPECT_EQ(HumanCount(30532122624.0), "30.5B");
  EXPECT_EQ(HumanCount(1.5e12), "1.5T");
  EXPECT_EQ(HumanCount(2.5e15), "2500.0T");
  EXPECT_EQ(HumanCount(-1234), "-1.2K");
}

TEST(ProgressFormat, HumanBytes) {
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(1023.9), "1.0 KiB");
  EXPECT_EQ(HumanBytes(3.4 * double(int64_t(1) << 30)), "3.4 GiB");
  EXPECT_EQ(HumanBytes(double(int64_t(141) << 30)), "141.0 GiB");
  EXPECT_EQ(HumanBytes(double(int64_t(2) << 40)), "2.0 TiB");
}

TEST(ProgressFormat, DurationsAndNumbers) {
  EXPECT_EQ(FormatDuration(0), "0:00:00");
  EXPECT_EQ(FormatDuration(201), "0:03:21");
  EXPECT_EQ(FormatDuration(201.6), "0:03:22");
  EXPECT_EQ(FormatDuration(90061), "25:01:01");
  EXPECT_EQ(FormatDuration(NAN), "-:--:--");
  EXPECT_EQ(FormatDuration(-1), "-:--:--");
  EXPECT_EQ(FormatSci(1e-4), "1.0e-4");
  EXPECT_EQ(FormatSci(2.5e-5), "2.5e-5");
  EXPECT_EQ(FormatSci(9.96e-5), "1.0e-4");
  EXPECT_EQ(FormatSci(3), "3.0e+0");
  EXPECT_EQ(FormatSci(0), "0");
  EXPECT_EQ(FormatSci(NAN), "nan");
  EXPECT_EQ(FormatLoss(2.345), "2.345");
  EXPECT_EQ(FormatLoss(0.012345), "0.01235");
  EXPECT_EQ(FormatLoss(12.3456), "12.35");
  EXPECT_EQ(FormatLoss(-NAN), "nan");
}

// ---- style selection ----

TEST(Progress, LiveBarOnlyOnARealTerminalOutsideCi) {
  EXPECT_TRUE(WantsLiveBar(true, "xterm-256color", nullptr));
  EXPECT_TRUE(WantsLiveBar(true, "xterm", ""));
  EXPECT_TRUE(WantsLiveBar(true, "xterm", "false"));
  EXPECT_TRUE(WantsLiveBar(true, "xterm", "0"));
  EXPECT_FALSE(WantsLiveBar(false, "xterm", nullptr));  // a file or a pipe
  EXPECT_FALSE(WantsLiveBar(true, "dumb", nullptr));
  EXPECT_FALSE(WantsLiveBar(true, nullptr, nullptr));
  EXPECT_FALSE(WantsLiveBar(true, "", nullptr));
  EXPECT_FALSE(WantsLiveBar(true, "xterm", "true"));
  EXPECT_FALSE(WantsLiveBar(true, "xterm", "1"));
  Capture c;  // a memstream is no terminal: kAuto picks lines
  EXPECT_EQ(Progress(c.file(), 10).style(), ProgressStyle::kLines);
}

// ---- the bar ----

TEST(Progress, BarIsRedrawnInPlace) {
  Capture c;
  ProgressOptions o;
  o.style = ProgressStyle::kBar;
  o.bar_width = 10;
  Progress p(c.file(), 100, o);
  p.Update(Step(12, 2.345));
  std::string want = "\rstep  12/100 [#.........] loss 2.345 lr 1.0e-4 tok/s 1234 ETA 0:01:28";
  EXPECT_EQ(c.text(), want);
  StepMetrics m = Step(13, 12.5);
  m.skipped = true;
  p.Update(m);
  want += "\rstep  13/100 [#.........] loss 12.5 lr 1.0e-4 tok/s 1234 ETA 0:01:27 skipped";
  EXPECT_EQ(c.text(), want);
  p.Update(Step(100, 1.5, 3.0));  // shorter than the line before: padded with spaces
  want +=
      "\rstep 100/100 [##########] loss 1.5 lr 1.0e-4 tok/s 1234 ETA 0:00:00" + std::string(9, ' ');
  EXPECT_EQ(c.text(), want);
  p.Finish();
  p.Finish();  // once only
  EXPECT_EQ(c.text().back(), '\n');
  EXPECT_EQ(c.text().find('\n'), c.text().size() - 1);
}

TEST(Progress, MessageDoesNotGarbleTheBar) {
  Capture c;
  ProgressOptions o;
  o.style = ProgressStyle::kBar;
  o.bar_width = 4;
  Progress p(c.file(), 9, o);
  p.Message("before any step");
  p.Update(Step(3, 2.0));
  const std::string bar = "step 3/9 [#...] loss 2 lr 1.0e-4 tok/s 1234 ETA 0:00:06";
  EXPECT_EQ(c.text(), "before any step\n\r" + bar);
  p.Message("saved checkpoint step 3");
  EXPECT_EQ(c.text(), "before any step\n\r" + bar + "\r" + std::string(bar.size(), ' ') +
                          "\rsaved checkpoint step 3\n" + bar);
}

// ---- plain lines ----

TEST(Progress, LinesEveryNStepsPlusFirstAndLast) {
  Capture c;
  ProgressOptions o;
  o.style = ProgressStyle::kLines;
  o.every_steps = 4;
  o.every_seconds = 0;
  Progress p(c.file(), 10, o);
  for (int64_t s = 1; s <= 10; ++s) p.Update(Step(s, 3.0 - 0.1 * double(s), 2.0));
  p.Finish();
  EXPECT_EQ(c.text(),
            "step 1/10 (10%) loss 2.9 lr 1.0e-4 tok/s 1234 ETA 0:00:18\n"
            "step 4/10 (40%) loss 2.6 lr 1.0e-4 tok/s 1234 ETA 0:00:12\n"
            "step 8/10 (80%) loss 2.2 lr 1.0e-4 tok/s 1234 ETA 0:00:04\n"
            "step 10/10 (100%) loss 2 lr 1.0e-4 tok/s 1234 ETA 0:00:00\n");
}

TEST(Progress, LinesEverySSecondsAndFinishPrintsTheLastStep) {
  Capture c;
  ProgressOptions o;
  o.style = ProgressStyle::kLines;
  o.every_steps = 0;
  o.every_seconds = 25;
  Progress p(c.file(), 100, o);
  for (int64_t s = 1; s <= 7; ++s) p.Update(Step(s, 2.0, 10.0));  // elapsed 10, 20, ... 70
  p.Finish();  // stopped early (e.g. interrupted): the last step seen is printed
  EXPECT_EQ(c.text(),
            "step 1/100 (1%) loss 2 lr 1.0e-4 tok/s 1234 ETA 0:16:30\n"
            "step 4/100 (4%) loss 2 lr 1.0e-4 tok/s 1234 ETA 0:16:00\n"
            "step 7/100 (7%) loss 2 lr 1.0e-4 tok/s 1234 ETA 0:15:30\n");
  const std::string once = c.text();
  p.Finish();
  EXPECT_EQ(c.text(), once);
}

TEST(Progress, EtaIsAMovingAverageOfStepTimes) {
  Capture c;
  ProgressOptions o;
  o.style = ProgressStyle::kLines;
  o.eta_window = 3;
  Progress p(c.file(), 100, o);
  EXPECT_TRUE(std::isnan(p.EtaSeconds(0)));
  p.Update(Step(1, 1.0, 100.0));  // a slow first step (warm-up)...
  EXPECT_DOUBLE_EQ(p.EtaSeconds(1), 99 * 100.0);
  for (int64_t s = 2; s <= 4; ++s) p.Update(Step(s, 1.0, 1.0));
  EXPECT_DOUBLE_EQ(p.EtaSeconds(4), 96 * 1.0);  // ...drops out of the window
  StepMetrics untimed = Step(5, 1.0);
  untimed.step_time_s = StepMetrics::kNaN;
  untimed.tokens_per_s = StepMetrics::kNaN;
  EXPECT_EQ(Progress(c.file(), 10, o).Fields(untimed), "loss 1 lr 1.0e-4 tok/s - ETA -:--:--");
}

// ---- the run summary ----

TEST(RunSummary, AlignedBlockForAnMoeModel) {
  RunSummary s;
  s.total_params = 30532122624;
  s.active_params = 3353032704;
  s.num_layers = 48;
  s.num_experts = 128;
  s.top_k = 8;
  s.samples = 12345;
  s.tokens = 45600000;
  s.masked_fraction = 0.375;
  s.dropped = 12;
  s.truncated = 3;
  s.memory_estimate_bytes = int64_t(13207024435);  // 12.3 GiB
  s.extra.push_back({"run", "steps", "1000"});
  s.extra.push_back({"data", "packing", "8192 tokens per row"});
  Capture c;
  PrintRunSummary(c.file(), s);
  EXPECT_EQ(c.text(),
            "model   parameters  30.5B (3.4B active)\n"
            "        layers      48\n"
            "        experts     128 routed, top-8\n"
            "data    samples     12.3K (12 dropped, 3 truncated)\n"
            "        tokens      45.6M (37.5% masked)\n"
            "        packing     8192 tokens per row\n"
            "memory  estimate    12.3 GiB\n"
            "run     steps       1000\n");
}

TEST(RunSummary, DenseModelAndUnknownFieldsAreLeftOut) {
  RunSummary s;
  s.total_params = 600000000;
  s.active_params = 600000000;
  s.num_layers = 28;
  s.samples = 100;
  Capture c;
  PrintRunSummary(c.file(), s);
  EXPECT_EQ(c.text(),
            "model  parameters  600.0M\n"
            "       layers      28\n"
            "data   samples     100\n");
}

}  // namespace
}  // namespace xt
