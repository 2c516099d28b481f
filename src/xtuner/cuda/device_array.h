// DeviceArray: a stream-ordered device buffer owned by a host object (the CUDA model's
// activations and scratch, the expert exchange's rows).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "xtuner/core/status.h"
#include "xtuner/cuda/device.h"

namespace xt::cuda {

// A device array of n elements of T, freed with the object. Stream-ordered: allocated and freed
// on the stream it was last allocated on (cudaMallocAsync / cudaFreeAsync), from the device's
// memory pool (CudaModel tells it to keep what is freed: after the first step a step's buffers
// come from the pool without a device synchronisation or a new mapping). Host code: the C++
// compiler or nvcc.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(DeviceArray&& o) noexcept : p_(o.p_), n_(o.n_), stream_(o.stream_) {
    o.p_ = nullptr, o.n_ = 0;
  }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(stream_, o.stream_);
    return *this;
  }
  ~DeviceArray() { Free(); }
  // Holds n elements (contents undefined), queued on `stream`; never allocates zero bytes.
  Status Alloc(int64_t n, void* stream) {
    Free();
    stream_ = stream;
    n_ = n;
    const Status st = Check(
        cudaMallocAsync(&p_, size_t(std::max<int64_t>(n, 1)) * sizeof(T), cudaStream_t(stream)),
        "device buffer");
    if (!st.ok()) {
      p_ = nullptr, n_ = 0;
      cudaGetLastError();  // a failed allocation is not sticky: clear it for later launch checks
    }
    return st;
  }
  // Holds at least n elements, keeping the buffer when it is large enough.
  Status Reserve(int64_t n, void* stream) {
    return n <= n_ && p_ ? Status::OK() : Alloc(n, stream);
  }
  Status Zero(void* stream) {
    return Check(cudaMemsetAsync(p_, 0, size_t(n_) * sizeof(T), cudaStream_t(stream)), "memset");
  }
  Status Upload(const T* host, int64_t n, void* stream) {
    XT_RETURN_IF_ERROR(Alloc(n, stream));
    if (n == 0) return Status::OK();
    return Check(cudaMemcpyAsync(p_, host, size_t(n) * sizeof(T), cudaMemcpyHostToDevice,
                                 cudaStream_t(stream)),
                 "upload");
  }
  T* get() const { return p_; }
  int64_t size() const { return n_; }

 private:
  void Free() {
    if (p_) cudaFreeAsync(p_, cudaStream_t(stream_));
    p_ = nullptr;
  }
  T* p_ = nullptr;
  int64_t n_ = 0;
  void* stream_ = nullptr;
};

}  // namespace xt::cuda
