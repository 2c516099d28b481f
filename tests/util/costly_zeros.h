// CostlyZeros: host memory (HostShardMemory's) that says its zeros cost what they take, as a
// GPU's do (ShardMemory::zeros_are_free false), so that ShardedParams packs a LoRA run's
// gradients (compact_grads) on the host, where tests can read them; and that holds bf16 buffers
// as a GPU's does (the frozen weights a GPU mesh holds in bf16 only).
#pragma once

#include <cstdint>
#include <cstring>

#include "xtuner/dist/shard_memory.h"

namespace xt::testing {

class CostlyZeros : public ShardMemory {
 public:
  float* Alloc(int64_t n, const char* what) override { return host_->Alloc(n, what); }
  void Free(float* p) override { host_->Free(p); }
  void Zero(float* p, int64_t n) override { host_->Zero(p, n); }
  void Add(float* dst, const float* src, int64_t n) override { host_->Add(dst, src, n); }
  void Copy(float* dst, const float* src, int64_t n) override { host_->Copy(dst, src, n); }
  bool supports_bf16() const override { return true; }
  uint16_t* AllocBf16(int64_t n, const char*) override {
    bf16_floats_ += n;
    return new uint16_t[size_t(n > 0 ? n : 1)];
  }
  // Elements of every bf16 buffer allocated so far.
  int64_t bf16_floats() const { return bf16_floats_; }
  void FreeBf16(uint16_t* p) override { delete[] p; }
  void WidenBf16(float* dst, const uint16_t* src, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t bits = uint32_t(src[i]) << 16;
      std::memcpy(dst + i, &bits, 4);
    }
  }

 private:
  ShardMemory* host_ = HostShardMemory();
  int64_t bf16_floats_ = 0;
};

}  // namespace xt::testing
