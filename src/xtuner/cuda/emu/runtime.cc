// The CUDA emulator's runtime API (the part of libcudart the engine calls), on host memory: one
// device per process ("xtuner CUDA emulator", compute capability 9.0), every call synchronous,
// streams and events as handles. Device allocations are tracked, so a copy whose device side is not
// inside a live allocation, a free of a pointer the device never gave, or a stream that was
// destroyed fails as the runtime would fail it (cudaErrorInvalidValue,
// cudaErrorInvalidResourceHandle).
#include <cuda_runtime.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "xtuner/cuda/emu/host_waits.h"
#include "xtuner/cuda/emu/state.h"

namespace xt::emu {
namespace {

constexpr size_t kTotalBytes = size_t(80) << 30;  // what cudaMemGetInfo reports as the device
constexpr size_t kAlign = 256;                    // cudaMalloc's alignment

struct State {
  std::mutex mu;
  cudaError_t last = cudaSuccess;
  struct Allocation {
    size_t bytes;  // asked for
    bool pooled;   // from cudaMallocAsync: the memory pool's (its attributes count only these)
    bool mapped;   // a virtual memory mapping (vmm.cc): cuMemUnmap's, not cudaFree's
  };
  std::map<const char*, Allocation> allocations;  // by base
  size_t in_use = 0;                              // the device's, every allocation (rounded)
  size_t pool_in_use = 0, pool_high = 0;          // the pool's
  std::set<cudaStream_t> streams;
  std::map<cudaEvent_t, std::chrono::steady_clock::time_point> events;
  std::map<const void*, size_t> max_shared;
};

State& S() {
  static State* s = new State;  // never destroyed: frees may come from static destructors
  return *s;
}

cudaError_t Fail(cudaError_t err) {
  SetLastError(err);
  return err;
}
// Fail, for a caller that holds the state's lock.
cudaError_t FailLocked(State& s, cudaError_t err) {
  if (s.last == cudaSuccess) s.last = err;
  return err;
}

// What an allocation of `bytes` takes: whole kAlign units.
size_t Rounded(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The device's pool handle (one device, one pool).
cudaMemPool_t Pool() { return reinterpret_cast<cudaMemPool_t>(&S()); }

cudaError_t Alloc(void** p, size_t bytes, bool pooled) {
  if (!p) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (bytes > kTotalBytes - s.in_use) return FailLocked(s, cudaErrorMemoryAllocation);
  const size_t size = Rounded(bytes);
  void* q = size == 0 ? nullptr : std::aligned_alloc(kAlign, size);
  if (size != 0 && !q) return FailLocked(s, cudaErrorMemoryAllocation);
  // Fresh device memory holds a NaN pattern: a read of what was never written shows.
  if (q) std::memset(q, 0xff, size);
  *p = q;
  if (q) {
    // The size asked for, not the rounded one: a copy past it fails (the device would not see it).
    s.allocations[static_cast<const char*>(q)] = {bytes, pooled, false};
    s.in_use += size;
    if (pooled) {
      s.pool_in_use += size;
      s.pool_high = std::max(s.pool_high, s.pool_in_use);
    }
  }
  return cudaSuccess;
}

cudaError_t Free(void* p) {
  if (!p) return cudaSuccess;
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.allocations.find(static_cast<const char*>(p));
  if (it == s.allocations.end() || it->second.mapped) return FailLocked(s, cudaErrorInvalidValue);
  const size_t size = Rounded(it->second.bytes);
  s.in_use -= size;
  if (it->second.pooled) s.pool_in_use -= size;
  // A use after free reads NaN (unless the memory is reused).
  std::memset(p, 0xff, it->second.bytes);
  s.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

// Whether a copy of `bytes` from src to dst fits `kind`'s sides.
bool CopyOk(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return true;
  switch (kind) {
    case cudaMemcpyHostToDevice:
      return IsDevice(dst, bytes);
    case cudaMemcpyDeviceToHost:
      return IsDevice(src, bytes);
    case cudaMemcpyDeviceToDevice:
      return IsDevice(src, bytes) && IsDevice(dst, bytes);
    case cudaMemcpyHostToHost:
    case cudaMemcpyDefault:
      return true;
  }
  return false;
}

}  // namespace

void SetLastError(cudaError_t err) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.last == cudaSuccess) s.last = err;
}

bool StreamValid(cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread) return true;
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.streams.count(stream) > 0;
}

size_t MaxDynamicShared(const void* kernel) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.max_shared.find(kernel);
  return it == s.max_shared.end() ? 0 : it->second;
}

bool IsDevice(const void* p, size_t bytes) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  const char* c = static_cast<const char*>(p);
  auto it = s.allocations.upper_bound(c);
  if (it == s.allocations.begin()) return false;
  --it;
  return c >= it->first && c + bytes <= it->first + it->second.bytes;
}

bool TakePhysical(size_t bytes) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (bytes > kTotalBytes - s.in_use) return false;
  s.in_use += bytes;
  return true;
}

void GivePhysical(size_t bytes) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  s.in_use -= bytes;
}

bool AddMapping(const void* p, size_t bytes) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.allocations.insert({static_cast<const char*>(p), {bytes, false, true}}).second;
}

bool RemoveMapping(const void* p, size_t bytes) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.allocations.find(static_cast<const char*>(p));
  if (it == s.allocations.end() || !it->second.mapped || it->second.bytes != bytes) return false;
  s.allocations.erase(it);
  return true;
}

std::atomic<int64_t> g_host_waits{0};
int64_t HostWaits() { return g_host_waits.load(); }

}  // namespace xt::emu

using namespace xt::emu;

extern "C" {

cudaError_t cudaGetLastError(void) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  const cudaError_t e = s.last;
  s.last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.last;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    default:
      return "cudaError (emulator)";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    default:
      return "unknown error (CUDA emulator)";
  }
}

cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return Fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) { return cudaDriverGetVersion(v); }

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return Fail(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  if (!device) return Fail(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : Fail(cudaErrorInvalidDevice);
}
cudaError_t cudaDeviceSynchronize(void) {
  ++g_host_waits;
  return cudaSuccess;
}
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (!value) return Fail(cudaErrorInvalidValue);
  if (device != 0) return Fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      break;
    case cudaDevAttrMemoryPoolsSupported:
      *value = 1;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = 227 << 10;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = 48 << 10;
      break;
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      break;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      break;
    case cudaDevAttrWarpSize:
      *value = 32;
      break;
    default:
      return Fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return Fail(cudaErrorInvalidValue);
  if (device != 0) return Fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::strncpy(prop->name, "xtuner CUDA emulator (CPU)", sizeof prop->name - 1);
  // Each process is its own device (ranks under mpirun use distinct ones, as NCCL asks).
  const int pid = int(getpid());
  std::memcpy(prop->uuid.bytes, "xtuner-emu", 10);
  std::memcpy(prop->uuid.bytes + 10, &pid, sizeof pid);
  prop->totalGlobalMem = kTotalBytes;
  prop->sharedMemPerBlock = 48 << 10;
  prop->sharedMemPerBlockOptin = 227 << 10;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (!free || !total) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  *total = kTotalBytes;
  *free = kTotalBytes - s.in_use;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return Fail(cudaErrorInvalidValue);
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > (227 << 10)) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  s.max_shared[func] = size_t(value);
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t size) { return Alloc(p, size, false); }
cudaError_t cudaFree(void* p) { return Free(p); }
cudaError_t cudaMallocHost(void** p, size_t size) {
  if (!p) return Fail(cudaErrorInvalidValue);
  *p = std::malloc(size ? size : 1);
  return *p ? cudaSuccess : Fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t size, cudaStream_t st) {
  if (!StreamValid(st)) return Fail(cudaErrorInvalidResourceHandle);
  return Alloc(p, size, true);
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t st) {
  if (!StreamValid(st)) return Fail(cudaErrorInvalidResourceHandle);
  return Free(p);
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  ++g_host_waits;  // a blocking copy waits for the device
  if (!CopyOk(dst, src, count, kind)) return Fail(cudaErrorInvalidValue);
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t st) {
  if (!StreamValid(st)) return Fail(cudaErrorInvalidResourceHandle);
  if (!CopyOk(dst, src, count, kind)) return Fail(cudaErrorInvalidValue);
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t count) {
  if (count && !IsDevice(p, count)) return Fail(cudaErrorInvalidValue);
  if (count) std::memset(p, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t st) {
  if (!StreamValid(st)) return Fail(cudaErrorInvalidResourceHandle);
  return cudaMemset(p, value, count);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* st, unsigned int) {
  if (!st) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  *st = reinterpret_cast<cudaStream_t>(new char);
  s.streams.insert(*st);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* st) { return cudaStreamCreateWithFlags(st, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t st) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.streams.erase(st)) return cudaErrorInvalidResourceHandle;
  delete reinterpret_cast<char*>(st);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st) {
  ++g_host_waits;
  return StreamValid(st) ? cudaSuccess : Fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaStreamWaitEvent(cudaStream_t st, cudaEvent_t, unsigned int) {
  return StreamValid(st) ? cudaSuccess : Fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* ev, unsigned int) {
  if (!ev) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  *ev = reinterpret_cast<cudaEvent_t>(new char);
  s.events[*ev] = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* ev) { return cudaEventCreateWithFlags(ev, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t ev) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.events.erase(ev)) return cudaErrorInvalidResourceHandle;
  delete reinterpret_cast<char*>(ev);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.events.find(ev);
  if (it == s.events.end()) return cudaErrorInvalidResourceHandle;
  it->second = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  ++g_host_waits;
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto ia = s.events.find(a), ib = s.events.find(b);
  if (!ms || ia == s.events.end() || ib == s.events.end()) return cudaErrorInvalidResourceHandle;
  *ms = std::chrono::duration<float, std::milli>(ib->second - ia->second).count();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!pool) return Fail(cudaErrorInvalidValue);
  if (device != 0) return Fail(cudaErrorInvalidDevice);
  *pool = Pool();
  return cudaSuccess;
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t) {
  return pool == Pool() ? cudaSuccess : Fail(cudaErrorInvalidValue);
}
// The pool's reserved and used memory are its live allocations, cudaMallocAsync's (the emulator
// does not cache freed blocks, so reserved equals used); cudaMalloc's are not the pool's.
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (pool != Pool() || !value) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (attr == cudaMemPoolAttrReservedMemHigh || attr == cudaMemPoolAttrUsedMemHigh) {
    if (*static_cast<uint64_t*>(value) != 0)
      return FailLocked(s, cudaErrorInvalidValue);  // reset only
    s.pool_high = s.pool_in_use;
  }
  return cudaSuccess;
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (pool != Pool() || !value) return Fail(cudaErrorInvalidValue);
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  switch (attr) {
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh:
      *static_cast<uint64_t*>(value) = s.pool_high;
      break;
    case cudaMemPoolAttrReservedMemCurrent:
    case cudaMemPoolAttrUsedMemCurrent:
      *static_cast<uint64_t*>(value) = s.pool_in_use;
      break;
    case cudaMemPoolAttrReleaseThreshold:
      *static_cast<uint64_t*>(value) = 0;
      break;
    default:
      return FailLocked(s, cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

}  // extern "C"
