#include "xtuner/dist/shard_memory.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "xtuner/core/status.h"
#include "xtuner/core/zero_pages.h"

namespace xt {

uint16_t* ShardMemory::AllocBf16(int64_t, const char* what) {
  XT_CHECK(false, std::string("ShardMemory: no bf16 buffers here, for ") + what);
  return nullptr;
}
void ShardMemory::FreeBf16(uint16_t* p) { XT_CHECK(!p, "ShardMemory: no bf16 buffers here"); }
void ShardMemory::WidenBf16(float*, const uint16_t*, int64_t) {
  XT_CHECK(false, "ShardMemory: no bf16 buffers here");
}

namespace {

class HostMemory : public ShardMemory {
 public:
  float* Alloc(int64_t n, const char*) override {
    return new float[size_t(std::max<int64_t>(n, 1))];
  }
  float* AllocZeros(int64_t n, const char* what) override {
    std::shared_ptr<float> p = AllocZeroPages(n, what);
    std::lock_guard<std::mutex> lock(mu_);
    zero_pages_[p.get()] = p;
    return p.get();
  }
  void Free(float* p) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (zero_pages_.erase(p)) return;  // unmapped with its last owner
    }
    delete[] p;
  }
  void Zero(float* p, int64_t n) override { std::fill(p, p + n, 0.0f); }
  void Add(float* dst, const float* src, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }
  void Copy(float* dst, const float* src, int64_t n) override { std::copy(src, src + n, dst); }
  bool zeros_are_free() const override { return true; }

 private:
  std::mutex mu_;
  std::unordered_map<float*, std::shared_ptr<float>> zero_pages_;
};

}  // namespace

ShardMemory* HostShardMemory() {
  static HostMemory memory;
  return &memory;
}

}  // namespace xt
