#include "xtuner/cuda/sparse_slab.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <string>

#include "xtuner/cuda/device.h"
#include "xtuner/plan/frozen_bf16.h"

namespace xt::cuda {
namespace {

// The driver's virtual memory calls, looked up once through the runtime.
struct Driver {
  CUresult (*device_get)(CUdevice*, int);
  CUresult (*attribute)(int*, CUdevice_attribute, CUdevice);
  CUresult (*granularity)(size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags);
  CUresult (*reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long);
  CUresult (*address_free)(CUdeviceptr, size_t);
  CUresult (*create)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                     unsigned long long);
  CUresult (*release)(CUmemGenericAllocationHandle);
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  CUresult (*set_access)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t);
  CUresult (*unmap)(CUdeviceptr, size_t);
};

template <class F>
Status Lookup(const char* name, F* f) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t err =
      cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found);
  if (err != cudaSuccess)
    return Status::Error(std::string("CUDA's driver entry point ") + name + ": " +
                         cudaGetErrorString(err));
  if (found != cudaDriverEntryPointSuccess || !p)
    return Status::Error(std::string("CUDA's driver has no ") + name);
  *f = reinterpret_cast<F>(p);
  return Status::OK();
}

Result<const Driver*> Get() {
  static Driver d;
  static const Status st = [] {
    XT_RETURN_IF_ERROR(Lookup("cuDeviceGet", &d.device_get));
    XT_RETURN_IF_ERROR(Lookup("cuDeviceGetAttribute", &d.attribute));
    XT_RETURN_IF_ERROR(Lookup("cuMemGetAllocationGranularity", &d.granularity));
    XT_RETURN_IF_ERROR(Lookup("cuMemAddressReserve", &d.reserve));
    XT_RETURN_IF_ERROR(Lookup("cuMemAddressFree", &d.address_free));
    XT_RETURN_IF_ERROR(Lookup("cuMemCreate", &d.create));
    XT_RETURN_IF_ERROR(Lookup("cuMemRelease", &d.release));
    XT_RETURN_IF_ERROR(Lookup("cuMemMap", &d.map));
    XT_RETURN_IF_ERROR(Lookup("cuMemSetAccess", &d.set_access));
    XT_RETURN_IF_ERROR(Lookup("cuMemUnmap", &d.unmap));
    return Status::OK();
  }();
  if (!st.ok()) return st;
  return static_cast<const Driver*>(&d);
}

Status Ok(CUresult r, const std::string& what) {
  if (r == CUDA_SUCCESS) return Status::OK();
  return Status::Error("CUDA virtual memory: " + what + " failed (CUresult " +
                       std::to_string(int(r)) +
                       (r == CUDA_ERROR_OUT_OF_MEMORY ? ": out of device memory" : "") + ")");
}

// Physical memory on the current device.
Result<CUmemAllocationProp> DeviceProp() {
  int device = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&device), "device"));
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

}  // namespace

Status SparseSlab::Supported() {
  XT_ASSIGN_OR_RETURN(const Driver* d, Get());
  int device = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&device), "device"));
  CUdevice dev = 0;
  int vmm = 0;
  XT_RETURN_IF_ERROR(Ok(d->device_get(&dev, device), "cuDeviceGet"));
  XT_RETURN_IF_ERROR(Ok(
      d->attribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev), "query"));
  if (!vmm)
    return Status::Error("device " + std::to_string(device) +
                         " does not support CUDA's virtual memory management");
  return Status::OK();
}

Result<int64_t> SparseSlab::Granularity() {
  XT_ASSIGN_OR_RETURN(const Driver* d, Get());
  XT_ASSIGN_OR_RETURN(const CUmemAllocationProp prop, DeviceProp());
  size_t g = 0;
  XT_RETURN_IF_ERROR(
      Ok(d->granularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), "granularity"));
  return int64_t(g);
}

Result<std::unique_ptr<SparseSlab>> SparseSlab::Create(
    int64_t n, const std::vector<std::pair<int64_t, int64_t>>& held) {
  if (n <= 0) return Status::Error("SparseSlab: no floats");
  XT_ASSIGN_OR_RETURN(const Driver* d, Get());
  XT_ASSIGN_OR_RETURN(const CUmemAllocationProp prop, DeviceProp());
  XT_ASSIGN_OR_RETURN(const int64_t g, Granularity());
  std::unique_ptr<SparseSlab> s(new SparseSlab());
  s->n_ = n;
  s->reserved_bytes_ = (n * int64_t(sizeof(float)) + g - 1) / g * g;
  CUdeviceptr base = 0;
  XT_RETURN_IF_ERROR(Ok(d->reserve(&base, size_t(s->reserved_bytes_), size_t(g), 0, 0),
                        "reserving " + std::to_string(s->reserved_bytes_) + " bytes of addresses"));
  s->data_ = reinterpret_cast<float*>(base);
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  for (const auto& [at, bytes] : GranuleMappings(n, held, g)) {
    Mapped m{at, bytes, 0};
    const std::string what = std::to_string(bytes) + " bytes of device memory";
    XT_RETURN_IF_ERROR(Ok(d->create(&m.handle, size_t(bytes), &prop, 0), "creating " + what));
    const Status mapped = Ok(d->map(base + at, size_t(bytes), 0, m.handle, 0), "mapping " + what);
    if (!mapped.ok()) {
      d->release(m.handle);
      return mapped;
    }
    s->mapped_.push_back(m);  // (unmapped and released by the destructor from here)
    s->held_bytes_ += bytes;
    XT_RETURN_IF_ERROR(
        Ok(d->set_access(base + at, size_t(bytes), &access, 1), "access to " + what));
  }
  return s;
}

SparseSlab::~SparseSlab() {
  auto d = Get();
  if (!d.ok() || !data_) return;
  const CUdeviceptr base = reinterpret_cast<CUdeviceptr>(data_);
  for (const Mapped& m : mapped_) {
    (*d)->unmap(base + m.at, size_t(m.bytes));
    (*d)->release(m.handle);
  }
  (*d)->address_free(base, size_t(reserved_bytes_));
}

}  // namespace xt::cuda
