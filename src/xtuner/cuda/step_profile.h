// StepProfile: where a training step's device time goes, by phase (attention forward, the
// experts' GEMMs, the lm_head and cross-entropy, ...). CudaModel marks the start of each phase on
// its stream with a CUDA event; a phase lasts until the next mark, so the device time between two
// marks, idle time included (the MoE layers wait for the host's routing plan), is the phase's.
// Phases of the same name add up (every layer's attention forward is one "attention_fwd").
//
// Off unless a model is given one (CudaModel::SetProfile): then each mark is one
// cudaEventRecord, and Finish waits for the stream. For benchmarks (bench/gpu_moe_bench.cc
// --profile), not for training runs.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::cuda {

class StepProfile {
 public:
  StepProfile() = default;
  ~StepProfile();
  StepProfile(const StepProfile&) = delete;
  StepProfile& operator=(const StepProfile&) = delete;

  // Drops the marks of a step that did not reach Finish (it failed midway).
  void Begin() { names_.clear(); }
  // Starts phase `name` (a string that outlives the step, e.g. a literal) on `stream` (a
  // cudaStream_t): the phase before it ends here.
  Status Mark(const char* name, void* stream);
  // Ends the last phase, waits for `stream`, and adds each phase's milliseconds to its name's
  // total. A Finish without marks adds nothing.
  Status Finish(void* stream);
  // Milliseconds per phase name over every finished step since Reset, in first-seen order.
  const std::vector<std::pair<std::string, double>>& totals() const { return totals_; }
  // Steps finished since Reset.
  int steps() const { return steps_; }
  void Reset();

 private:
  std::vector<void*> events_;       // cudaEvent_t, created as needed and reused
  std::vector<const char*> names_;  // the phase that starts at events_[i], for i < names_.size()
  std::vector<std::pair<std::string, double>> totals_;
  int steps_ = 0;
};

}  // namespace xt::cuda
