#include "xtuner/cuda/step_profile.h"

#include <cuda_runtime.h>

#include <cstring>

#include "xtuner/cuda/device.h"

namespace xt::cuda {

StepProfile::~StepProfile() {
  for (void* e : events_) cudaEventDestroy(cudaEvent_t(e));
}

Status StepProfile::Mark(const char* name, void* stream) {
  const size_t i = names_.size();
  if (i == events_.size()) {
    cudaEvent_t e = nullptr;
    XT_RETURN_IF_ERROR(Check(cudaEventCreate(&e), "step profile event"));
    events_.push_back(e);
  }
  XT_RETURN_IF_ERROR(
      Check(cudaEventRecord(cudaEvent_t(events_[i]), cudaStream_t(stream)), "step profile mark"));
  names_.push_back(name);
  return Status::OK();
}

Status StepProfile::Finish(void* stream) {
  if (names_.empty()) return Status::OK();
  const size_t n = names_.size();
  XT_RETURN_IF_ERROR(Mark("", stream));  // the end of the last phase
  names_.pop_back();
  const Status synced = Check(cudaEventSynchronize(cudaEvent_t(events_[n])), "step profile finish");
  std::vector<const char*> names;
  names.swap(names_);  // the next step marks from the start, whatever happens below
  XT_RETURN_IF_ERROR(synced);
  for (size_t i = 0; i < n; ++i) {
    float ms = 0;
    XT_RETURN_IF_ERROR(
        Check(cudaEventElapsedTime(&ms, cudaEvent_t(events_[i]), cudaEvent_t(events_[i + 1])),
              "step profile time"));
    size_t j = 0;
    while (j < totals_.size() && totals_[j].first != names[i]) ++j;
    if (j == totals_.size()) totals_.emplace_back(names[i], 0.0);
    totals_[j].second += double(ms);
  }
  ++steps_;
  return Status::OK();
}

void StepProfile::Reset() {
  names_.clear();
  totals_.clear();
  steps_ = 0;
}

}  // namespace xt::cuda
