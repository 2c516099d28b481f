#include <cuda_runtime.h>

#include "xtuner/cuda/device.h"

namespace xt::cuda {

bool DeviceAvailable(std::string* why) {
  int n = 0;
  const cudaError_t st = cudaGetDeviceCount(&n);
  if (st != cudaSuccess || n == 0) {
    int driver = 0;
    cudaDriverGetVersion(&driver);  // 0: no driver installed
    if (why)
      *why = driver == 0         ? "no NVIDIA driver installed: libcuda.so not found"
             : st != cudaSuccess ? std::string(cudaGetErrorString(st)) + " (driver " +
                                       std::to_string(driver / 1000) + "." +
                                       std::to_string(driver % 1000 / 10) + ")"
                                 : "no CUDA device";
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
