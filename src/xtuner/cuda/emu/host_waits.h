// What the CUDA emulator can tell a test that a GPU cannot: how often the host has waited for
// the device (cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize and the
// blocking cudaMemcpy), so that a test can hold a step to the waits it is allowed. Only in
// emulator builds (XTUNER_CUDA_EMU). A lower bound of a GPU's: a cudaMemcpyAsync between the
// device and pageable host memory also makes a GPU's host wait, and is not counted (the engine
// follows each of its own with a counted wait).
#pragma once

#include <cstdint>

namespace xt::emu {

// Host waits since the process started (all threads).
int64_t HostWaits();

}  // namespace xt::emu
