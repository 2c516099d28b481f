// XT_HOST_DEVICE: a function one header defines for both the CPU ops and their CUDA twins
// (__host__ __device__ under nvcc, nothing for the C++ compiler).
#pragma once

#if defined(__CUDACC__)
#define XT_HOST_DEVICE __host__ __device__
#else
#define XT_HOST_DEVICE
#endif
