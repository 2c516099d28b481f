// Launch helpers shared by the CUDA ops (internal to src/xtuner/cuda/*.cu): grid sizes within
// the hardware's limits for grid-stride loops, int64 thread indices, size checks as Status, and
// the ops' stream-ordered scratch memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/cuda/device.h"

#ifndef XTUNER_CUDA_EMU
// kernel<<<grid, block, smem, stream>>>, spelled so that the CUDA emulator can run it too
// (emu/emu.h defines both for its builds): XT_LAUNCH(kernel, grid, block, smem, stream)(args...).
#define XT_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
// The kernel's dynamic shared memory (the launch's smem bytes), 128-byte aligned.
#define XT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(128) type name[]
#endif

namespace xt::cuda::detail {

constexpr int kThreads = 256;  // threads per block of the elementwise kernels
// Loops with a block per item (rows, tokens) cover any count with at most this many blocks
// (gridDim.x may go to 2^31 - 1; more blocks than this only add scheduling work).
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// Grid-stride loops over elements: 2^16 blocks of 256 threads are 2^24 threads, some sixty times
// what an H200 holds at once (132 SMs x 2048), so more would only add blocks.
constexpr int64_t kStrideBlocks = int64_t(1) << 16;

// Blocks for a grid-stride loop over n > 0 items, `threads` per block.
inline unsigned BlocksFor(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < kStrideBlocks ? b : kStrideBlocks);
}

// Blocks for a loop with one block per item (rows, tokens), n > 0.
inline unsigned BlocksForItems(int64_t n) { return unsigned(n < kMaxBlocks ? n : kMaxBlocks); }

// This thread's first index and the stride of a 1-D grid-stride loop, in int64.
__device__ inline int64_t GlobalThread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
// Stores v in an output of either type: fp32, or bf16 (uint16_t bits of __nv_bfloat16) rounded
// to nearest even, as ToBf16 rounds: a kernel whose output only feeds bf16 products writes it
// rounded, the value ToBf16 would have made of its fp32 output.
__device__ inline void StoreAs(float* p, float v) { *p = v; }
__device__ inline void StoreAs(uint16_t* p, float v) {
  *p = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
// Loads an input of either type as fp32 (bf16: exactly, every bf16 is a float).
__device__ inline float LoadAs(const float* p) { return *p; }
__device__ inline float LoadAs(const uint16_t* p) {
  return __bfloat162float(__ushort_as_bfloat16(*p));
}
__device__ inline int64_t GridThreads() { return int64_t(gridDim.x) * blockDim.x; }

// Opts `kernel` in to `bytes` of dynamic shared memory, or an error when the device has less
// per block.
template <class Kernel>
Status PrepareSmem(Kernel* kernel, size_t bytes, const char* what) {
  int dev = 0, optin = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&dev), what));
  XT_RETURN_IF_ERROR(
      Check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), what));
  if (bytes > size_t(optin))
    return Status::Error(std::string(what) + ": needs " + std::to_string(bytes) +
                         " bytes of shared memory per block, the device has " +
                         std::to_string(optin));
  return Check(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), what);
}

// OK when the current device has bf16 tensor cores (compute capability 8.0 or newer), else an
// error naming `what`, the device and its capability (kernels that need them compile to a trap
// for older architectures).
inline Status Bf16TensorCores(const char* what) {
  int dev = 0, major = 0, minor = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&dev), what));
  XT_RETURN_IF_ERROR(
      Check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), what));
  XT_RETURN_IF_ERROR(
      Check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), what));
  if (major < 8)
    return Status::Error(
        std::string(what) + ": needs bf16 tensor cores (compute capability 8.0 or newer); device " +
        std::to_string(dev) + " is " + std::to_string(major) + "." + std::to_string(minor));
  return Status::OK();
}

// An error naming `op` when any of the sizes is negative.
inline Status CheckSizes(const char* op, std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes)
    if (s < 0) return Status::Error(std::string(op) + ": negative size " + std::to_string(s));
  return Status::OK();
}

// The experts' row offsets (E + 1, on the host) of a grouped op: present, from 0, never
// decreasing; an error naming `op` and the first expert where they fail otherwise.
inline Status CheckExpertOffsets(const std::string& op, const int32_t* offsets, int64_t E) {
  if (!offsets) return Status::Error(op + ": null offsets");
  if (offsets[0] != 0) return Status::Error(op + ": offsets must start at 0");
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] < offsets[e])
      return Status::Error(op + ": offsets decrease at expert " + std::to_string(e));
  return Status::OK();
}

// Stream-ordered scratch: cudaMallocAsync on the stream; Release frees everything (cudaFreeAsync,
// in stream order after the work queued so far) and reports a failure; the destructor frees what
// is left, so error paths lose nothing.
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  ~Scratch() {
    for (void* p : ptrs_) cudaFreeAsync(p, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // count elements of T (at least one is allocated, so the pointer is valid even when empty).
  template <class T>
  Status Alloc(T** p, int64_t count, const char* what) {
    void* v = nullptr;
    XT_RETURN_IF_ERROR(
        Check(cudaMallocAsync(&v, size_t(std::max<int64_t>(count, 1)) * sizeof(T), stream_), what));
    ptrs_.push_back(v);
    *p = static_cast<T*>(v);
    return Status::OK();
  }
  Status Release(const char* what) {
    Status st;
    for (void* p : ptrs_) {
      const Status freed = Check(cudaFreeAsync(p, stream_), what);
      if (st.ok()) st = freed;
    }
    ptrs_.clear();
    return st;
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> ptrs_;
};

}  // namespace xt::cuda::detail
