// metrics.jsonl: one JSON object per optimizer step (ToJson in metrics.h), one per line, in step
// order, in <work_dir>/metrics.jsonl. Made for `jq`, pandas.read_json(lines=True) and plots.
//
// Durability: every line is written whole and flushed to the kernel before Append returns, so a
// crashed process loses at most the line being written (a power cut may lose more: no fsync).
// A torn last line is removed by the next TruncateAfterStep.
//
// Resume: a run resumed from the checkpoint of step s first drops every line with step > s (they
// describe steps that will be trained again), so the file reads as one uninterrupted run.
//
// Thread safety: none; one writer per file (rank 0).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/train/metrics.h"

namespace xt {

// Cuts `path` just before its first line that has step > `step`, that is torn (no final newline)
// or, as the last line, does not parse (a crash mid-write). A missing file is OK (nothing to
// cut). Fails, naming the file and line, on an unparseable line that is followed by more lines
// (the file is not ours or was damaged: better stop than delete what follows), or on I/O errors.
Status TruncateAfterStep(const std::string& path, int64_t step);

class MetricsJsonl {
 public:
  // Opens `path` for appending (creating it and not its directory) after
  // TruncateAfterStep(path, after_step). after_step = the step a resumed run restarts from, 0 for
  // a fresh run (which clears the lines of any earlier run in the same work_dir).
  static Result<std::unique_ptr<MetricsJsonl>> Open(const std::string& path, int64_t after_step);
  ~MetricsJsonl();
  MetricsJsonl(const MetricsJsonl&) = delete;
  MetricsJsonl& operator=(const MetricsJsonl&) = delete;

  // Writes ToJson(m) as one line and flushes. Fails, naming the file, when the write fails (a
  // full disk); the file then ends with at most one torn line.
  Status Append(const StepMetrics& m);

  const std::string& path() const { return path_; }

 private:
  MetricsJsonl(std::string path, std::FILE* f) : path_(std::move(path)), f_(f) {}
  std::string path_;
  std::FILE* f_;
};

}  // namespace xt
