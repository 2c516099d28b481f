// The progress display: what a person watching the run sees after each optimizer step.
//
// Two styles, one set of fields:
// - kBar (a terminal): one line redrawn in place with '\r' after every step,
//     step  12/100 [##..................] loss 2.345 lr 1.0e-4 tok/s 1234 ETA 0:03:21
//   padded with spaces when it gets shorter, so no stale characters remain.
// - kLines (CI, a log file, a pipe): complete lines, never '\r',
//     step 12/100 (12%) loss 2.345 lr 1.0e-4 tok/s 1234 ETA 0:03:21
//   for the first step seen, then every `every_steps` steps, or when `every_seconds` of run time
//   (StepMetrics::elapsed_s) have passed since the last line, and for the last step.
// A skipped step appends " skipped". The ETA is (total - step) times the mean of the last
// `eta_window` step times (StepMetrics::step_time_s); "-:--:--" before any is known.
//
// The stream is injected (tests pass an open_memstream); Progress does not own it.
// Thread safety: none; rank 0 only.
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <string>
#include <string_view>

#include "xtuner/train/metrics.h"

namespace xt {

enum class ProgressStyle { kAuto, kBar, kLines };

struct ProgressOptions {
  ProgressStyle style = ProgressStyle::kAuto;  // kAuto: WantsLiveBar(out) ? kBar : kLines
  int64_t every_steps = 10;                    // kLines: a line every N steps (<= 0: not by count)
  double every_seconds = 60;  // kLines: or after this many seconds (<= 0: not by time)
  int bar_width = 20;         // characters between the brackets
  int eta_window = 20;        // steps in the moving average of the step time
};

// Whether a stream should get the live bar: it is a terminal, TERM is set and not "dumb", and
// CI is unset, empty, "0" or "false" (CI systems set CI=true, often with a pseudo-terminal).
bool WantsLiveBar(bool is_tty, const char* term, const char* ci);
// The same for `out`, from isatty(fileno(out)) and the environment.
bool WantsLiveBar(std::FILE* out);

class Progress {
 public:
  // total_steps: the step the run ends at (the "/100"). kAuto is resolved here, once.
  Progress(std::FILE* out, int64_t total_steps, ProgressOptions options = {});

  // After each optimizer step: records its time and draws or prints per the style.
  void Update(const StepMetrics& m);
  // Prints a whole line of text (a warning, a checkpoint saved) without garbling the bar: the bar
  // is erased, the line printed, the bar redrawn below it.
  void Message(std::string_view line);
  // The end: the bar's line is ended with '\n'; in kLines the last step is printed if it was
  // not. Safe to call more than once.
  void Finish();

  ProgressStyle style() const { return style_; }
  // The fields of a step as both styles print them, from "loss" on ("loss ... ETA h:mm:ss").
  std::string Fields(const StepMetrics& m) const;
  // ETA in seconds at `step` from the recorded step times; NaN when none is known.
  double EtaSeconds(int64_t step) const;

 private:
  std::string BarLine(const StepMetrics& m) const;
  std::string PlainLine(const StepMetrics& m) const;
  void Draw(const std::string& line);

  std::FILE* out_;
  int64_t total_;
  ProgressOptions options_;
  ProgressStyle style_;
  std::deque<double> step_times_;  // the last eta_window step times
  double step_time_sum_ = 0;
  std::string bar_;                // the bar as last drawn ("" when none is on screen)
  bool have_last_ = false;         // a step was seen
  StepMetrics last_;               // the last step seen
  bool printed_last_ = false;      // kLines: the last step seen was printed
  double last_print_elapsed_ = 0;  // kLines: elapsed_s of the last printed line
  bool finished_ = false;
};

}  // namespace xt
