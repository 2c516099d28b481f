#include "xtuner/dist/shard_memory.h"

#include <algorithm>

namespace xt {
namespace {

class HostMemory : public ShardMemory {
 public:
  float* Alloc(int64_t n, const char*) override {
    return new float[size_t(std::max<int64_t>(n, 1))];
  }
  void Free(float* p) override { delete[] p; }
  void Zero(float* p, int64_t n) override { std::fill(p, p + n, 0.0f); }
  void Add(float* dst, const float* src, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }
};

}  // namespace

ShardMemory* HostShardMemory() {
  static HostMemory memory;
  return &memory;
}

}  // namespace xt
