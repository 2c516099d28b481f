// The CUDA emulator's runtime state shared by its scheduler (simt.cc) and its runtime API
// (runtime.cc): the sticky launch error, the streams, the kernels' shared-memory limits and the
// device allocations, which the virtual memory management (vmm.cc) shares.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace xt::emu {

// The error cudaGetLastError returns next (and clears).
void SetLastError(cudaError_t err);
// Whether `stream` is the legacy default stream or one created and not destroyed.
bool StreamValid(cudaStream_t stream);
// The dynamic shared memory cudaFuncSetAttribute allowed for `kernel` (0: none set).
size_t MaxDynamicShared(const void* kernel);
// Whether [p, p + bytes) lies inside one live device allocation (or virtual memory mapping).
bool IsDevice(const void* p, size_t bytes);
// The virtual memory management of vmm.cc: physical memory counted against the device's total
// (TakePhysical: false when it would exceed it), and mappings made known to IsDevice (AddMapping:
// false where one starts at p already; RemoveMapping: false unless one of `bytes` starts at p).
bool TakePhysical(size_t bytes);
void GivePhysical(size_t bytes);
bool AddMapping(const void* p, size_t bytes);
bool RemoveMapping(const void* p, size_t bytes);

}  // namespace xt::emu
