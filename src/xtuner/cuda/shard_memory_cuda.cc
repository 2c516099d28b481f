#include "xtuner/cuda/shard_memory_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/loss_cuda.h"

namespace xt::cuda {
namespace {

[[noreturn]] void Fail(const Status& st) {
  std::fprintf(stderr, "xtuner: error: %s\n", st.message().c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

class DeviceMemory : public ShardMemory {
 public:
  explicit DeviceMemory(void* stream) : stream_(cudaStream_t(stream)) {}
  float* Alloc(int64_t n, const char* what) override {
    void* p = nullptr;
    const size_t bytes = size_t(std::max<int64_t>(n, 1)) * sizeof(float);
    const cudaError_t err = cudaMallocAsync(&p, bytes, stream_);
    if (err != cudaSuccess) {
      char size[64];
      std::snprintf(size, sizeof size, " (%.2f GiB)", double(bytes) / double(1 << 30));
      Fail(Check(err, (std::string("device memory for ") + what + size).c_str()));
    }
    return static_cast<float*>(p);
  }
  void Free(float* p) override {
    if (p) cudaFreeAsync(p, stream_);
  }
  void Zero(float* p, int64_t n) override {
    if (n > 0) Must(Check(cudaMemsetAsync(p, 0, size_t(n) * sizeof(float), stream_), "zero"));
  }
  void Add(float* dst, const float* src, int64_t n) override {
    if (n > 0) Must(AddInPlace(dst, src, n, stream_));
  }

 private:
  static void Must(const Status& st) {
    if (!st.ok()) Fail(st);
  }
  cudaStream_t stream_;
};

}  // namespace

std::unique_ptr<ShardMemory> MakeDeviceShardMemory(void* stream) {
  return std::make_unique<DeviceMemory>(stream);
}

}  // namespace xt::cuda
