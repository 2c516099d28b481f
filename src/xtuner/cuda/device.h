// The CUDA backend's basics (issue 7, in progress): whether a GPU is usable, and CUDA errors as
// Status. Built only with the CUDA toolkit (CMake option XTUNER_CUDA: ON, OFF, or AUTO when nvcc
// is found); every CUDA op has a CPU twin in ops/ that its tests compare it with.
#pragma once

#include <string>

#include "xtuner/core/status.h"

namespace xt::cuda {

// Whether this process sees at least one CUDA device it can use; `why` (optional) receives the
// reason when not (no driver, no device, ...).
bool DeviceAvailable(std::string* why = nullptr);

// OK, or an error naming `what` and CUDA's message for `code` (a cudaError_t).
Status Check(int code, const char* what);

}  // namespace xt::cuda
