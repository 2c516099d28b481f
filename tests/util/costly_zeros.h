// CostlyZeros: host memory (HostShardMemory's) that says its zeros cost what they take, as a
// GPU's do (ShardMemory::zeros_are_free false), so that ShardedParams packs a LoRA run's
// gradients (compact_grads) on the host, where tests can read them.
#pragma once

#include "xtuner/dist/shard_memory.h"

namespace xt::testing {

class CostlyZeros : public ShardMemory {
 public:
  float* Alloc(int64_t n, const char* what) override { return host_->Alloc(n, what); }
  void Free(float* p) override { host_->Free(p); }
  void Zero(float* p, int64_t n) override { host_->Zero(p, n); }
  void Add(float* dst, const float* src, int64_t n) override { host_->Add(dst, src, n); }

 private:
  ShardMemory* host_ = HostShardMemory();
};

}  // namespace xt::testing
