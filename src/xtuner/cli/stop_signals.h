// StopSignals: while one lives, SIGINT (Ctrl-C) and SIGTERM (Slurm's warning before it kills a
// job) ask the training loop to stop after its step and save a checkpoint; a second one ends
// the process at once by that signal.
//
// The signals are blocked in every thread and taken by a watcher thread through sigtimedwait,
// so no handler ever runs on a compute thread's stack (with a plain handler, one interrupted run
// in five corrupted the heap, most likely through a handler frame pushed under oneDNN's JIT
// kernels). Construct it before any other thread starts, MPI's included: threads inherit the
// blocked mask, and one that does not block the signals may take it and die of it.
#pragma once

#include <atomic>
#include <csignal>
#include <functional>
#include <thread>

namespace xt::cli {

class StopSignals {
 public:
  // `on_first` runs on the watcher thread when the first signal arrives.
  explicit StopSignals(std::function<void()> on_first);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  sigset_t set_, old_;
  std::atomic<bool> done_{false};
  std::thread watcher_;
};

}  // namespace xt::cli
