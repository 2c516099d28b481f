#include "xtuner/cuda/shard_memory_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/sparse_slab.h"

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
  // A SparseSlab: mapped outside the stream's order, unmapped after the stream is done with it.
  float* AllocHeld(int64_t n, const std::vector<std::pair<int64_t, int64_t>>& held,
                   const char* what) override {
    auto slab = SparseSlab::Create(std::max<int64_t>(n, 1), held);
    if (!slab.ok())
      Fail(
          Status::Error(std::string("device memory for ") + what + ": " + slab.status().message()));
    float* p = (*slab)->data();
    held_bytes_ += (*slab)->held_bytes();
    slabs_[p] = std::move(*slab);
    return p;
  }
  int64_t held_bytes() const override { return held_bytes_; }
  void Copy(float* dst, const float* src, int64_t n) override {
    if (n > 0)
      Must(Check(
          cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, stream_),
          "copy"));
  }
  bool supports_bf16() const override { return true; }
  uint16_t* AllocBf16(int64_t n, const char* what) override {
    return reinterpret_cast<uint16_t*>(Alloc((n + 1) / 2, what));
  }
  void FreeBf16(uint16_t* p) override { Free(reinterpret_cast<float*>(p)); }
  void WidenBf16(float* dst, const uint16_t* src, int64_t n) override {
    if (n > 0) Must(FromBf16(dst, src, n, stream_));
  }
  void Free(float* p) override {
    auto it = slabs_.find(p);
    if (it == slabs_.end()) {
      if (p) cudaFreeAsync(p, stream_);
      return;
    }
    Must(Check(cudaStreamSynchronize(stream_), "the stream before unmapping"));
    held_bytes_ -= it->second->held_bytes();
    slabs_.erase(it);
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
  std::map<float*, std::unique_ptr<SparseSlab>> slabs_;  // AllocHeld's, by data()
  int64_t held_bytes_ = 0;
};

}  // namespace

std::unique_ptr<ShardMemory> MakeDeviceShardMemory(void* stream) {
  return std::make_unique<DeviceMemory>(stream);
}

}  // namespace xt::cuda
