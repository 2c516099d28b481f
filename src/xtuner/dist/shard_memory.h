// ShardMemory: where a ShardedParams keeps its floats (dist/sharded_params.h): the host (the
// default) or a device (cuda/shard_memory_cuda.h), so that the same ZeRO-3 bookkeeping serves
// the CPU model over MPI and the GPU model over NCCL. Its Comm must take buffers of the same
// kind (MpiComm: host; NcclComm: device).
//
// Contract: Alloc(n) -> n floats, uninitialised, never null (an allocation failure ends the job
// with a message naming `what`); AllocZeros(n) -> n floats of zeros (host: pages committed only
// where written, core/zero_pages.h); Free(p) returns either (null: nothing). Zero and Add may be
// queued (a device's stream): they are complete, like the Comm's collectives, in the order they
// were called. Free of a buffer whose use is queued is safe (stream-ordered on a device).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace xt {

class ShardMemory {
 public:
  virtual ~ShardMemory() = default;
  virtual float* Alloc(int64_t n, const char* what) = 0;
  virtual float* AllocZeros(int64_t n, const char* what) {
    float* p = Alloc(n, what);
    Zero(p, n);
    return p;
  }
  // n floats of which only the `held` ranges ((offset, count), sorted and disjoint) hold memory:
  // the rest are addresses that nothing may read or write (a LoRA run's frozen weights that a GPU
  // holds in bf16 only, plan/frozen_bf16.h). Contents undefined; freed by Free. The default
  // holds all of it (the host's).
  virtual float* AllocHeld(int64_t n, const std::vector<std::pair<int64_t, int64_t>>& held,
                           const char* what) {
    (void)held;
    return Alloc(n, what);
  }
  // The memory AllocHeld's live buffers hold, in bytes (0 where they are plain allocations).
  virtual int64_t held_bytes() const { return 0; }
  // bf16 values (the frozen weights a GPU holds in bf16 only over several ranks): n of them,
  // uninitialised; freed by FreeBf16; dst (n floats) = src widened (exact). Only where
  // supports_bf16() (a device's); the host's end the job.
  virtual bool supports_bf16() const { return false; }
  virtual uint16_t* AllocBf16(int64_t n, const char* what);
  virtual void FreeBf16(uint16_t* p);
  virtual void WidenBf16(float* dst, const uint16_t* src, int64_t n);
  virtual void Free(float* p) = 0;
  virtual void Zero(float* p, int64_t n) = 0;
  // dst (n) += src (n).
  virtual void Add(float* dst, const float* src, int64_t n) = 0;
  // dst (n) = src (n), bit for bit.
  virtual void Copy(float* dst, const float* src, int64_t n) = 0;
  // Whether AllocZeros costs memory only where it is written (the host's fresh pages), so that
  // a buffer mostly never written (a LoRA run's frozen weights' gradients) is nearly free.
  virtual bool zeros_are_free() const { return false; }
};

// Host memory (operator new; its failure throws std::bad_alloc as a vector's would; AllocZeros:
// fresh anonymous pages).
ShardMemory* HostShardMemory();

}  // namespace xt
