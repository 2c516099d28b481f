#include "xtuner/train/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "xtuner/train/progress_format.h"

namespace xt {

bool WantsLiveBar(bool is_tty, const char* term, const char* ci) {
  if (!is_tty) return false;
  if (term == nullptr || *term == '\0' || std::strcmp(term, "dumb") == 0) return false;
  const bool in_ci = ci != nullptr && *ci != '\0' && std::strcmp(ci, "0") != 0 &&
                     std::strcmp(ci, "false") != 0 && std::strcmp(ci, "False") != 0;
  return !in_ci;
}

bool WantsLiveBar(std::FILE* out) {
  return WantsLiveBar(isatty(fileno(out)) == 1, std::getenv("TERM"), std::getenv("CI"));
}

Progress::Progress(std::FILE* out, int64_t total_steps, ProgressOptions options)
    : out_(out), total_(total_steps), options_(options), style_(options.style) {
  XT_CHECK(total_steps >= 1, "a run has at least one step");
  if (style_ == ProgressStyle::kAuto) {
    style_ = WantsLiveBar(out) ? ProgressStyle::kBar : ProgressStyle::kLines;
  }
  if (options_.eta_window < 1) options_.eta_window = 1;
  if (options_.bar_width < 1) options_.bar_width = 1;
}

double Progress::EtaSeconds(int64_t step) const {
  if (step_times_.empty()) return StepMetrics::kNaN;
  const int64_t remaining = total_ > step ? total_ - step : 0;
  return double(remaining) * step_time_sum_ / double(step_times_.size());
}

std::string Progress::Fields(const StepMetrics& m) const {
  char tok[32] = "-";
  if (std::isfinite(m.tokens_per_s)) std::snprintf(tok, sizeof tok, "%.0f", m.tokens_per_s);
  std::string s = "loss " + FormatLoss(m.loss) + " lr " + FormatSci(m.lr) + " tok/s " + tok +
                  " ETA " + FormatDuration(EtaSeconds(m.step));
  if (m.skipped) s += " skipped";
  return s;
}

std::string Progress::BarLine(const StepMetrics& m) const {
  const int width = int(std::to_string(total_).size());
  char head[64];
  std::snprintf(head, sizeof head, "step %*lld/%lld ", width, static_cast<long long>(m.step),
                static_cast<long long>(total_));
  const int w = options_.bar_width;
  int64_t filled = m.step <= 0 ? 0 : m.step >= total_ ? w : m.step * w / total_;
  std::string line = head;  // appended piece by piece: GCC 12 warns wrongly on char[] + string
  line += '[';
  line.append(size_t(filled), '#');
  line.append(size_t(w - filled), '.');
  line += "] ";
  line += Fields(m);
  return line;
}

std::string Progress::PlainLine(const StepMetrics& m) const {
  const int64_t pct = m.step <= 0 ? 0 : m.step >= total_ ? 100 : m.step * 100 / total_;
  char head[80];
  std::snprintf(head, sizeof head, "step %lld/%lld (%lld%%) ", static_cast<long long>(m.step),
                static_cast<long long>(total_), static_cast<long long>(pct));
  std::string line = head;
  line += Fields(m);
  return line;
}

void Progress::Draw(const std::string& line) {
  const size_t pad = bar_.size() > line.size() ? bar_.size() - line.size() : 0;
  std::fprintf(out_, "\r%s%*s", line.c_str(), int(pad), "");
  std::fflush(out_);
  bar_ = line;
}

void Progress::Update(const StepMetrics& m) {
  finished_ = false;
  if (std::isfinite(m.step_time_s) && m.step_time_s >= 0) {
    step_times_.push_back(m.step_time_s);
    step_time_sum_ += m.step_time_s;
    while (int64_t(step_times_.size()) > options_.eta_window) {
      step_time_sum_ -= step_times_.front();
      step_times_.pop_front();
    }
  }
  const bool first = !have_last_;
  have_last_ = true;
  last_ = m;
  if (style_ == ProgressStyle::kBar) {
    Draw(BarLine(m));
    return;
  }
  bool print = first || m.step >= total_;
  if (options_.every_steps > 0 && m.step % options_.every_steps == 0) print = true;
  if (options_.every_seconds > 0 && std::isfinite(m.elapsed_s) &&
      m.elapsed_s - last_print_elapsed_ >= options_.every_seconds) {
    print = true;
  }
  printed_last_ = print;
  if (!print) return;
  if (std::isfinite(m.elapsed_s)) last_print_elapsed_ = m.elapsed_s;
  std::fprintf(out_, "%s\n", PlainLine(m).c_str());
  std::fflush(out_);
}

void Progress::Message(std::string_view line) {
  if (style_ == ProgressStyle::kBar && !bar_.empty()) {
    std::fprintf(out_, "\r%*s\r%.*s\n%s", int(bar_.size()), "", int(line.size()), line.data(),
                 bar_.c_str());
  } else {
    std::fprintf(out_, "%.*s\n", int(line.size()), line.data());
  }
  std::fflush(out_);
}

void Progress::Finish() {
  if (finished_) return;
  finished_ = true;
  if (style_ == ProgressStyle::kBar) {
    if (!bar_.empty()) std::fputc('\n', out_);
    bar_.clear();
  } else if (have_last_ && !printed_last_) {
    std::fprintf(out_, "%s\n", PlainLine(last_).c_str());
    printed_last_ = true;
  }
  std::fflush(out_);
}

}  // namespace xt
