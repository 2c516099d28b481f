// The CUDA emulator's virtual memory management: the driver API's cuMem* calls that
// cuda/sparse_slab.cc reaches through cudaGetDriverEntryPointByVersion, on host pages. An address
// range is reserved as inaccessible pages (mmap PROT_NONE), so that a read or write of a part
// that holds no memory faults, as it would on the device; physical memory (cuMemCreate) counts
// against the device's total; a mapping becomes readable and writable at cuMemSetAccess, filled
// with the NaN pattern of fresh device memory, and is known to the runtime's copies
// (IsDevice) until cuMemUnmap returns its pages. The granularity is the host's page, so that
// tests on small models still leave whole pages unheld (a GPU's is 2 MiB).
// One mapping per physical allocation, of its whole size at offset 0 (all sparse_slab.cc does).
#include <cuda.h>
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>

#include "xtuner/cuda/emu/state.h"

namespace xt::emu {
namespace {

struct Vmm {
  std::mutex mu;
  std::map<uintptr_t, size_t> reserved;  // by base: size
  std::map<CUmemGenericAllocationHandle, size_t> physical;
  struct Mapping {
    size_t size;
    CUmemGenericAllocationHandle handle;
    bool accessible;
  };
  std::map<uintptr_t, Mapping> mappings;  // by base
  CUmemGenericAllocationHandle next = 1;
};

Vmm& V() {
  static Vmm* v = new Vmm;  // never destroyed, as the runtime's state
  return *v;
}

size_t Page() { return size_t(sysconf(_SC_PAGESIZE)); }

bool Aligned(uintptr_t x) { return x % Page() == 0; }

// Whether [p, p + size) lies inside one reservation.
bool InReserved(Vmm& v, uintptr_t p, size_t size) {
  auto it = v.reserved.upper_bound(p);
  if (it == v.reserved.begin()) return false;
  --it;
  return p >= it->first && p + size <= it->first + it->second;
}

CUresult DeviceGet(CUdevice* device, int ordinal) {
  if (!device || ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *device = 0;
  return CUDA_SUCCESS;
}

// The one attribute asked: virtual memory management, supported.
CUresult DeviceGetAttribute(int* value, CUdevice_attribute attr, CUdevice device) {
  if (!value || device != 0 || attr != CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)
    return CUDA_ERROR_INVALID_VALUE;
  *value = 1;
  return CUDA_SUCCESS;
}

CUresult GetGranularity(size_t* granularity, const CUmemAllocationProp* prop,
                        CUmemAllocationGranularity_flags) {
  if (!granularity || !prop) return CUDA_ERROR_INVALID_VALUE;
  *granularity = Page();
  return CUDA_SUCCESS;
}

CUresult AddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment, CUdeviceptr addr,
                        unsigned long long flags) {
  if (!ptr || size == 0 || !Aligned(size) || addr != 0 || flags != 0 ||
      (alignment != 0 && alignment % Page() != 0))
    return CUDA_ERROR_INVALID_VALUE;
  void* p = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  v.reserved[uintptr_t(p)] = size;
  *ptr = CUdeviceptr(p);
  return CUDA_SUCCESS;
}

CUresult AddressFree(CUdeviceptr ptr, size_t size) {
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  auto it = v.reserved.find(uintptr_t(ptr));
  if (it == v.reserved.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  for (const auto& [at, m] : v.mappings)  // every mapping in it must be unmapped first
    if (at >= ptr && at < ptr + size) return CUDA_ERROR_INVALID_VALUE;
  munmap(reinterpret_cast<void*>(ptr), size);
  v.reserved.erase(it);
  return CUDA_SUCCESS;
}

CUresult Create(CUmemGenericAllocationHandle* handle, size_t size, const CUmemAllocationProp* prop,
                unsigned long long flags) {
  if (!handle || !prop || size == 0 || !Aligned(size) || flags != 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
      prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id != 0)
    return CUDA_ERROR_INVALID_VALUE;
  if (!TakePhysical(size)) return CUDA_ERROR_OUT_OF_MEMORY;
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  *handle = v.next++;
  v.physical[*handle] = size;
  return CUDA_SUCCESS;
}

CUresult Release(CUmemGenericAllocationHandle handle) {
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  auto it = v.physical.find(handle);
  if (it == v.physical.end()) return CUDA_ERROR_INVALID_VALUE;
  GivePhysical(it->second);  // (still mapped: the device keeps it until the unmap; not modelled)
  v.physical.erase(it);
  return CUDA_SUCCESS;
}

CUresult Map(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
             unsigned long long flags) {
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  auto h = v.physical.find(handle);
  if (h == v.physical.end() || h->second != size || offset != 0 || flags != 0 || !Aligned(ptr) ||
      !InReserved(v, ptr, size))
    return CUDA_ERROR_INVALID_VALUE;
  auto next = v.mappings.lower_bound(ptr);  // no overlap with a mapping made before
  if (next != v.mappings.end() && next->first < ptr + size) return CUDA_ERROR_INVALID_VALUE;
  if (next != v.mappings.begin() && std::prev(next)->first + std::prev(next)->second.size > ptr)
    return CUDA_ERROR_INVALID_VALUE;
  v.mappings[uintptr_t(ptr)] = {size, handle, false};
  return CUDA_SUCCESS;
}

CUresult SetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc, size_t count) {
  if (!desc || count != 1 || desc->location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
      desc->location.id != 0 || desc->flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
    return CUDA_ERROR_INVALID_VALUE;
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  auto it = v.mappings.find(uintptr_t(ptr));
  if (it == v.mappings.end() || it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  if (it->second.accessible) return CUDA_SUCCESS;
  void* p = reinterpret_cast<void*>(ptr);
  if (mprotect(p, size, PROT_READ | PROT_WRITE) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  std::memset(p, 0xff, size);  // fresh device memory: a read of what was never written shows
  if (!AddMapping(p, size)) return CUDA_ERROR_INVALID_VALUE;
  it->second.accessible = true;
  return CUDA_SUCCESS;
}

CUresult Unmap(CUdeviceptr ptr, size_t size) {
  Vmm& v = V();
  std::lock_guard<std::mutex> lock(v.mu);
  auto it = v.mappings.find(uintptr_t(ptr));
  if (it == v.mappings.end() || it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  void* p = reinterpret_cast<void*>(ptr);
  if (it->second.accessible && !RemoveMapping(p, size)) return CUDA_ERROR_INVALID_VALUE;
  madvise(p, size, MADV_DONTNEED);  // the pages go back; inaccessible again
  mprotect(p, size, PROT_NONE);
  v.mappings.erase(it);
  return CUDA_SUCCESS;
}

}  // namespace
}  // namespace xt::emu

using namespace xt::emu;

extern "C" {

cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** funcPtr, unsigned int,
                                             unsigned long long,
                                             cudaDriverEntryPointQueryResult* status) {
  if (!symbol || !funcPtr) return cudaErrorInvalidValue;
  static const std::map<std::string, void*> kEntries = {
      {"cuDeviceGet", reinterpret_cast<void*>(&DeviceGet)},
      {"cuDeviceGetAttribute", reinterpret_cast<void*>(&DeviceGetAttribute)},
      {"cuMemGetAllocationGranularity", reinterpret_cast<void*>(&GetGranularity)},
      {"cuMemAddressReserve", reinterpret_cast<void*>(&AddressReserve)},
      {"cuMemAddressFree", reinterpret_cast<void*>(&AddressFree)},
      {"cuMemCreate", reinterpret_cast<void*>(&Create)},
      {"cuMemRelease", reinterpret_cast<void*>(&Release)},
      {"cuMemMap", reinterpret_cast<void*>(&Map)},
      {"cuMemSetAccess", reinterpret_cast<void*>(&SetAccess)},
      {"cuMemUnmap", reinterpret_cast<void*>(&Unmap)},
  };
  auto it = kEntries.find(symbol);
  *funcPtr = it == kEntries.end() ? nullptr : it->second;
  if (status)
    *status =
        it == kEntries.end() ? cudaDriverEntryPointSymbolNotFound : cudaDriverEntryPointSuccess;
  return cudaSuccess;
}

}  // extern "C"
