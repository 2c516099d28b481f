#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"

namespace xt::cuda {

bool DeviceAvailable(std::string* why) {
  int n = 0;
  const cudaError_t st = cudaGetDeviceCount(&n);
  if (st != cudaSuccess || n == 0) {
    if (why) *why = st != cudaSuccess ? cudaGetErrorString(st) : "no CUDA device";
    cudaGetLastError();  // clear the sticky error of the probe
    return false;
  }
  return true;
}

Status Check(int code, const char* what) {
  if (code == cudaSuccess) return Status::OK();
  return Status::Error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(cudaError_t(code)));
}

}  // namespace xt::cuda
