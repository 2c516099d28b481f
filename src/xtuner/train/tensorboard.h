// A TensorBoard event-file writer for scalars, with no TensorFlow or protobuf dependency (the
// bytes are in tensorboard_proto.h). `tensorboard --logdir <dir>` plots what it writes;
// tools/tensorboard/check_events.py reads a file back with the real tensorboard package.
//
// Each Open creates a new file, events.out.tfevents.<unix seconds, 10 digits>.<hostname> (".1",
// ".2", ... appended if that name is taken), whose first record is Event{file_version:
// "brain.Event:2"}. TensorBoard reads every such file in the directory as one run, so a resumed
// run simply opens a new file in the same directory and calls AddSessionStart(first step) to
// hide the points a crashed attempt wrote past its last checkpoint.
//
// Records are buffered (stdio): call Flush() to make them visible, e.g. once per logged step; the
// destructor flushes too. Errors are sticky: after a failed write every call returns it.
// Thread safety: none; one writer per file (rank 0).
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

class TensorBoardWriter {
 public:
  // Creates `dir` (with its parents) if needed and a new event file in it, then writes and
  // flushes the file_version record. Fails, naming the path, when either cannot be created.
  static Result<std::unique_ptr<TensorBoardWriter>> Open(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One scalar point of the curve `tag` (e.g. "train/loss") at `step`, stored as float32.
  Status AddScalar(const std::string& tag, int64_t step, double value);
  // Several scalars of one step in one record (cheaper than one AddScalar each).
  Status AddScalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  // SessionLog START at `step`: TensorBoard drops the points it already read with step >= step.
  Status AddSessionStart(int64_t step);
  Status Flush();

  const std::string& path() const { return path_; }
  // The wall_time source, seconds since the Unix epoch (default: the system clock).
  void SetClockForTesting(std::function<double()> clock) { clock_ = std::move(clock); }

 private:
  TensorBoardWriter(std::string path, std::FILE* f);
  Status Write(const std::string& event);

  std::string path_;
  std::FILE* f_;
  std::function<double()> clock_;
  Status error_;  // the first write error, returned by every later call
};

}  // namespace xt
