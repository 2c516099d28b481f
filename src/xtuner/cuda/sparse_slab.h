// SparseSlab: an array of device floats of which only some ranges hold memory: the whole range
// of addresses is reserved, and physical memory is created and mapped only where asked (CUDA's
// virtual memory management, cuMemAddressReserve / cuMemCreate / cuMemMap, reached through the
// runtime's cudaGetDriverEntryPointByVersion so that nothing links libcuda). A read or write of
// a part that holds no memory is an illegal address on the device and a fault in the emulator:
// those addresses are names, not storage. Used for a LoRA run's fp32 parameters on GPUs, whose
// frozen matmul weights are held in bf16 only (cuda/train_backend_cuda.cc).
// Memory is held in whole granules (2 MiB on current GPUs; the emulator's: the host's page).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::cuda {

class SparseSlab {
 public:
  // OK where the current device and driver support virtual memory management, else an error
  // saying what is missing.
  static Status Supported();
  // The current device's granularity of mapped memory, in bytes.
  static Result<int64_t> Granularity();
  // n floats (n > 0) whose `held` ranges ((offset, count) in floats, sorted, disjoint, inside
  // [0, n)) hold memory, widened to whole granules as plan/frozen_bf16.h's GranuleMappings
  // widens them (which may hold a little more). The memory's contents are undefined.
  static Result<std::unique_ptr<SparseSlab>> Create(
      int64_t n, const std::vector<std::pair<int64_t, int64_t>>& held);
  ~SparseSlab();  // unmaps and frees: the device must be done with it (the caller syncs)
  SparseSlab(const SparseSlab&) = delete;
  SparseSlab& operator=(const SparseSlab&) = delete;

  float* data() const { return data_; }
  int64_t size() const { return n_; }
  // The device memory it holds (whole granules).
  int64_t held_bytes() const { return held_bytes_; }

 private:
  SparseSlab() = default;
  float* data_ = nullptr;
  int64_t n_ = 0, reserved_bytes_ = 0, held_bytes_ = 0;
  struct Mapped {
    int64_t at, bytes;              // offset from data_, in bytes
    unsigned long long handle = 0;  // CUmemGenericAllocationHandle
  };
  std::vector<Mapped> mapped_;
};

}  // namespace xt::cuda
