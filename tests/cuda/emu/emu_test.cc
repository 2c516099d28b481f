// The CUDA emulator itself (built with -DXTUNER_CUDA_EMU=ON only, with emu.h included first, as
// the kernels are): barriers and shuffles exchange what the device would, WMMA products are
// right, shared memory holds nothing from the previous block, kernels run in the device's
// floating-point mode, launches over the device's limits fail, copies outside device memory
// fail, and a barrier that cannot be passed, or a warp operation after part of the warp
// returned, aborts with a message instead of passing; cp.async lands at its wait (or at once,
// on request) and ldmatrix reads shared memory only.
#include <gtest/gtest.h>
#include <mma.h>

#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "xtuner/cuda/mma_sm80.h"
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace {

// A product below FLT_MIN (a subnormal), across a barrier so that the threads switch.
__global__ void SubnormalKernel(float* out, float a, float b) {
  __syncthreads();
  out[threadIdx.x] = a * b;
}

// Reads its shared slot before writing it: nothing a block can rely on, so not what the previous
// block wrote.
__global__ void StaleSharedKernel(float* out) {
  __shared__ float s[32];
  out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = 1.0f;
}

// Each thread writes its index, and after the barrier reads its right neighbour's.
__global__ void RotateKernel(int* out) {
  __shared__ int s[256];
  const int t = int(threadIdx.x), n = int(blockDim.x);
  s[t] = t + 1000 * int(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[(t + 1) % n];
}

// The sum over each warp's lanes by xor shuffles, and lane 0's value by a broadcast shuffle.
__global__ void ShuffleKernel(float* sum, float* first) {
  const int t = int(threadIdx.x);
  float v = float(t);
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  sum[t] = v;
  first[t] = __shfl_sync(0xffffffffu, float(t) * 2.0f, 0);
}

__global__ void DynamicSharedKernel(float* out) {
  XT_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = smem[(threadIdx.x + 1) % blockDim.x];
}

// C (16 x 16) = A (16 x 16, row-major) B (16 x 16, col-major), one warp.
__global__ void MmaKernel(float* c, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.5f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

// Half of warp 0 waits at __syncthreads, the other half at __syncwarp: no schedule passes.
__global__ void DeadlockKernel(int* out) {
  if (threadIdx.x < 16)
    __syncthreads();
  else
    __syncwarp();
  out[threadIdx.x] = 1;
}

// Half of the warp returns, the other half shuffles.
__global__ void HalfWarpShuffleKernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Each thread copies its 4 floats of src into shared memory by cp.async and reads them back
// before the wait (out[t]) and after it (out[32 + t]).
__global__ void AsyncCopyKernel(float* out, const float* src) {
  XT_DYNAMIC_SHARED(float, s);
  const int t = int(threadIdx.x);
  xt::cuda::mma::CpAsync16(s + 4 * t, src + 4 * t, 16);
  xt::cuda::mma::CpAsyncCommit();
  out[t] = s[4 * t];
  xt::cuda::mma::CpAsyncWait<0>();
  out[32 + t] = s[4 * t];
}

// ldmatrix from global memory (it reads shared memory only).
__global__ void GlobalLdMatrixKernel(const __nv_bfloat16* x) {
  uint32_t r[4];
  xt::cuda::mma::LdMatrixX4(r, x + 8 * (threadIdx.x % 16));
}

// One mma.sync (mma_sm80.h) by the calling thread (a whole warp's on the device).
__device__ void OneMma(float* out) {
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float d[4] = {1.0f, 1.0f, 1.0f, 1.0f};
  xt::cuda::mma::Mma(d, a, b);
  out[threadIdx.x] = d[0];
}
__global__ void Sm80MmaKernel(float* out) { OneMma(out); }

// Half the warp at an mma, the other half at __syncwarp: the mma's operands are not all there.
__global__ void HalfWarpMmaKernel(float* out) {
  if (threadIdx.x < 16) {
    OneMma(out);
  } else {
    __syncwarp();
  }
}

template <class T>
T* DeviceCopy(const std::vector<T>& h) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, h.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}
template <class T>
std::vector<T> HostCopy(const T* p, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

TEST(CudaEmulator, BarriersExchangeSharedMemoryInBothOrders) {
  for (const char* order : {"forward", "reverse"}) {
    setenv("XT_CUDA_EMU_ORDER", order, 1);  // read at every launch
    const int blocks = 3, threads = 200;    // not a multiple of the warp
    int* out = DeviceCopy(std::vector<int>(blocks * threads, -1));
    XT_LAUNCH(RotateKernel, blocks, threads, 0, nullptr)(out);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<int> h = HostCopy(out, blocks * threads);
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < threads; ++t)
        ASSERT_EQ(h[b * threads + t], (t + 1) % threads + 1000 * b) << b << " " << t;
    cudaFree(out);
  }
  unsetenv("XT_CUDA_EMU_ORDER");
}

TEST(CudaEmulator, ShufflesExchangeWithinTheWarp) {
  const int threads = 64;
  float* sum = DeviceCopy(std::vector<float>(threads, 0.0f));
  float* first = DeviceCopy(std::vector<float>(threads, 0.0f));
  XT_LAUNCH(ShuffleKernel, 1, threads, 0, nullptr)(sum, first);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> s = HostCopy(sum, threads), f = HostCopy(first, threads);
  for (int t = 0; t < threads; ++t) {
    const int w = t / 32;
    EXPECT_EQ(s[t], float(32 * 32 * w + 31 * 32 / 2)) << t;  // sum of the warp's lane indices
    EXPECT_EQ(f[t], float(64 * w)) << t;                     // lane 0's value: 2 * (32 w)
  }
  cudaFree(sum);
  cudaFree(first);
}

TEST(CudaEmulator, WmmaProductIsTheMatrixProduct) {
  std::vector<__nv_bfloat16> a(256), b(256);
  std::vector<float> af(256), bf(256);
  for (int i = 0; i < 256; ++i) {
    af[i] = float((i * 7) % 11) - 5.0f;
    bf[i] = float((i * 5) % 13) * 0.25f - 1.0f;
    a[i] = __float2bfloat16_rn(af[i]);
    b[i] = __float2bfloat16_rn(bf[i]);
  }
  __nv_bfloat16 *da = DeviceCopy(a), *db = DeviceCopy(b);
  float* dc = DeviceCopy(std::vector<float>(256, NAN));
  XT_LAUNCH(MmaKernel, 1, 32, 0, nullptr)(dc, da, db);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> c = HostCopy(dc, 256);
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      float want = 0.5f;
      for (int k = 0; k < 16; ++k) want += af[r * 16 + k] * bf[col * 16 + k];  // B col-major
      EXPECT_EQ(c[r * 16 + col], want) << r << " " << col;
    }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
}

#if defined(__x86_64__)
// The device does not flush subnormals to zero (without -ftz): nor do kernels on the emulator,
// whatever floating-point mode the launching thread has set; its mode is back after the launch.
TEST(CudaEmulator, KernelsRunInTheDevicesFloatingPointModeWhateverTheHostsIs) {
  const unsigned host = _mm_getcsr();
  _mm_setcsr(host | 0x8040);  // flush to zero, denormals are zero
  float* out = DeviceCopy(std::vector<float>(64, -1.0f));
  volatile float a = 1e-30f, b = 1e-10f;
  XT_LAUNCH(SubnormalKernel, 1, 64, 0, nullptr)(out, a, b);
  const unsigned after = _mm_getcsr();
  _mm_setcsr(host);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(after & 0x8040u, 0x8040u) << "the launching thread's mode was not restored";
  const std::vector<float> h = HostCopy(out, 64);
  for (int t = 0; t < 64; ++t) {
    EXPECT_GT(h[t], 0.0f) << t;  // 1e-40: flushed to 0 in the host's mode
    EXPECT_LT(h[t], 1.2e-38f) << t;
  }
  cudaFree(out);
}
#endif

TEST(CudaEmulator, StaticSharedMemoryHoldsNothingFromThePreviousBlock) {
  float* out = DeviceCopy(std::vector<float>(3 * 32, 0.0f));
  XT_LAUNCH(StaleSharedKernel, 3, 32, 0, nullptr)(out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> h = HostCopy(out, 3 * 32);
  for (int i = 0; i < 3 * 32; ++i) EXPECT_TRUE(std::isnan(h[i])) << i << ": " << h[i];
  cudaFree(out);
}

TEST(CudaEmulator, LaunchesOverTheLimitsFail) {
  float* out = DeviceCopy(std::vector<float>(1024, 0.0f));
  XT_LAUNCH(DynamicSharedKernel, 1, 1025, 0, nullptr)(out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  XT_LAUNCH(DynamicSharedKernel, 0, 32, 0, nullptr)(out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  const size_t big = 64 << 10;  // above the 48 KiB a kernel gets without opting in
  XT_LAUNCH(DynamicSharedKernel, 1, 32, big, nullptr)(out);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ASSERT_EQ(cudaFuncSetAttribute(DynamicSharedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(big)),
            cudaSuccess);
  XT_LAUNCH(DynamicSharedKernel, 1, 32, big, nullptr)(out);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(HostCopy(out, 32), std::vector<float>(32, 1.0f));
  cudaFree(out);
}

TEST(CudaEmulator, CopiesOutsideDeviceMemoryFail) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 16 * sizeof(float)), cudaSuccess);
  std::vector<float> h(32, 1.0f), other(32, 0.0f);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 32 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);  // past the allocation's end
  EXPECT_EQ(cudaMemcpy(other.data(), h.data(), 4, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  cudaGetLastError();
  EXPECT_EQ(cudaFree(h.data()), cudaErrorInvalidValue);  // not the device's
  cudaGetLastError();
  EXPECT_EQ(cudaFree(d), cudaSuccess);
}

TEST(CudaEmulator, AsyncCopiesLandAtTheirWaitOrAtOnceWhenAskedTo) {
  std::vector<float> h(128);
  std::iota(h.begin(), h.end(), 1.0f);
  float* src = DeviceCopy(h);
  float* out = DeviceCopy(std::vector<float>(64, 0.0f));
  for (const char* mode : {"late", "early"}) {
    setenv("XT_CUDA_EMU_ASYNC", mode, 1);  // read at every launch
    XT_LAUNCH(AsyncCopyKernel, 1, 32, 128 * sizeof(float), nullptr)(out, src);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> got = HostCopy(out, 64);
    for (int t = 0; t < 32; ++t) {
      if (std::string(mode) == "late")
        EXPECT_TRUE(std::isnan(got[t])) << "read before the wait, thread " << t;
      else
        EXPECT_EQ(got[t], h[4 * t]) << "read before the wait (early), thread " << t;
      EXPECT_EQ(got[32 + t], h[4 * t]) << mode << ", read after the wait, thread " << t;
    }
  }
  unsetenv("XT_CUDA_EMU_ASYNC");
  cudaFree(src);
  cudaFree(out);
}

TEST(CudaEmulatorDeathTest, LdMatrixOutsideSharedMemoryAborts) {
  __nv_bfloat16* x = nullptr;
  ASSERT_EQ(cudaMalloc(&x, 256 * sizeof(__nv_bfloat16)), cudaSuccess);
  EXPECT_DEATH(XT_LAUNCH(GlobalLdMatrixKernel, 1, 32, 0, nullptr)(x),
               "ldmatrix from an address that is not 16-byte aligned dynamic shared memory");
  cudaFree(x);
}

TEST(CudaEmulatorDeathTest, AnImpassableBarrierAborts) {
  int* out = DeviceCopy(std::vector<int>(64, 0));
  EXPECT_DEATH(XT_LAUNCH(DeadlockKernel, 1, 64, 0, nullptr)(out), "deadlock in block");
  cudaFree(out);
}

TEST(CudaEmulatorDeathTest, AnMmaWithoutAWholeWarpAborts) {
  float* out = DeviceCopy(std::vector<float>(48, 0.0f));
  XT_LAUNCH(Sm80MmaKernel, 1, 32, 0, nullptr)(out);  // a whole warp: fine
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(HostCopy(out, 32), std::vector<float>(32, 1.0f));
  EXPECT_DEATH(XT_LAUNCH(Sm80MmaKernel, 1, 48, 0, nullptr)(out),
               "without all 32 lanes of the warp");
  EXPECT_DEATH(XT_LAUNCH(HalfWarpMmaKernel, 1, 32, 0, nullptr)(out),
               "without all 32 lanes of the warp");
  cudaFree(out);
}

TEST(CudaEmulatorDeathTest, AWarpOperationAfterPartOfTheWarpReturnedAborts) {
  float* out = DeviceCopy(std::vector<float>(32, 0.0f));
  EXPECT_DEATH(XT_LAUNCH(HalfWarpShuffleKernel, 1, 32, 0, nullptr)(out), "16 of its 32 lanes");
  cudaFree(out);
}

}  // namespace
