// The warp-level instructions of mma_sm80.h (mma.sync m16n8k16, ldmatrix x4 and x4.trans,
// cp.async with zero fill) against the register layouts that header documents, which the bf16
// attention's mma kernels rely on. One warp loads small-integer tiles (exact in bf16, their
// products and sums exact in fp32) with cp.async, multiplies them through LdA / LdBt / LdB / Mma,
// feeds a product's C fragments back as an A fragment (Pack), at nonzero row and column offsets
// in tiles of the attention kernels' row stride, and writes every fragment element
// where the documented layout puts it: every element must equal the exact product. On a GPU this
// checks the device's layout; on the emulator, the emulator's (which must be the same). Skipped
// (label `cuda`) where no GPU is present.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/mma_sm80.h"

namespace {

using xt::cuda::mma::bf16;
constexpr int kN = 16;  // every matrix is 16 x 16
// Each sits at rows and columns kOff.. of a (kOff + 16, kLd) shared tile: the attention kernels'
// row stride for D = 128 (272 bytes, rows 16-byte aligned) and nonzero offsets, so that the
// helpers' address arithmetic is checked too.
constexpr int kOff = 16, kLd = 128 + 8, kRowsS = kOff + kN;

// Writes the warp's C fragments of two n8 tiles (columns 0..7, 8..15) to out (16 x 16,
// row-major) where mma_sm80.h says each element is.
__device__ void StoreC(float* out, const float (&c)[2][4], int lane) {
  const int g = lane / 4, t = lane % 4;
  for (int j = 0; j < 2; ++j)
    for (int i = 0; i < 4; ++i) out[(g + 8 * (i / 2)) * kN + 8 * j + 2 * t + i % 2] = c[j][i];
}

// out: a x^T, a x, (a x^T rounded to bf16) y, and a zero-filled tile, each 16 x 16 fp32.
__global__ void MmaLayoutKernel(float* out, const bf16* a, const bf16* x, const bf16* y) {
  XT_DYNAMIC_SHARED(bf16, smem);
  const int lane = int(threadIdx.x);
  bf16* as = smem;
  bf16* xs = smem + kRowsS * kLd;
  bf16* ys = smem + 2 * kRowsS * kLd;
  bf16* zs = smem + 3 * kRowsS * kLd;
  // 32 pieces of 16 bytes a matrix: lane l copies row l / 2, columns 8 (l % 2) ..
  const int r = lane / 2, c = 8 * (lane % 2), at = (kOff + r) * kLd + kOff + c;
  xt::cuda::mma::CpAsync16(as + at, a + r * kN + c, 16);
  xt::cuda::mma::CpAsync16(xs + at, x + r * kN + c, 16);
  xt::cuda::mma::CpAsync16(ys + at, y + r * kN + c, 16);
  xt::cuda::mma::CpAsync16(zs + at, a + r * kN + c, 0);  // zero fill
  xt::cuda::mma::CpAsyncCommit();
  xt::cuda::mma::CpAsyncWait<0>();
  __syncwarp();

  uint32_t af[4], bt[4], bn[4], by[4];
  xt::cuda::mma::LdA(af, as, kLd, kOff, kOff, lane);
  xt::cuda::mma::LdBt(bt, xs, kLd, kOff, kOff, lane);
  xt::cuda::mma::LdB(bn, xs, kLd, kOff, kOff, lane);
  xt::cuda::mma::LdB(by, ys, kLd, kOff, kOff, lane);
  float c1[2][4] = {}, c2[2][4] = {}, d[2][4] = {};
  for (int j = 0; j < 2; ++j) {
    xt::cuda::mma::MmaHalf(c1[j], af, bt, j);
    xt::cuda::mma::MmaHalf(c2[j], af, bn, j);
  }
  const uint32_t p[4] = {
      xt::cuda::mma::Pack(c1[0][0], c1[0][1]), xt::cuda::mma::Pack(c1[0][2], c1[0][3]),
      xt::cuda::mma::Pack(c1[1][0], c1[1][1]), xt::cuda::mma::Pack(c1[1][2], c1[1][3])};
  for (int j = 0; j < 2; ++j) xt::cuda::mma::MmaHalf(d[j], p, by, j);
  StoreC(out, c1, lane);
  StoreC(out + kN * kN, c2, lane);
  StoreC(out + 2 * kN * kN, d, lane);
  for (int i = lane; i < kN * kN; i += 32)
    out[3 * kN * kN + i] = __bfloat162float(zs[(kOff + i / kN) * kLd + kOff + i % kN]);
}

TEST(MmaSm80Cuda, FragmentLayoutsGiveExactProducts) {
  std::string why;
  if (!xt::cuda::DeviceAvailable(&why)) GTEST_SKIP() << "skipped: no GPU (" << why << ")";
  int dev = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), cudaSuccess);
  if (major < 8) GTEST_SKIP() << "skipped: compute capability " << major << " < 8";

  // Integers in [-2, 2] (a x^T has |elements| <= 64: exact in bf16, so d is exact too), every
  // element distinct in position so that a permuted layout shows.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> dist(-2, 2);
  std::vector<float> fa(kN * kN), fx(kN * kN), fy(kN * kN);
  for (auto* v : {&fa, &fx, &fy})
    for (float& e : *v) e = float(dist(rng));
  auto to_bf16 = [](const std::vector<float>& f) {
    std::vector<bf16> b(f.size());
    for (size_t i = 0; i < f.size(); ++i) b[i] = __float2bfloat16(f[i]);
    return b;
  };
  const std::vector<bf16> ba = to_bf16(fa), bx = to_bf16(fx), by = to_bf16(fy);
  bf16 *da = nullptr, *dx = nullptr, *dy = nullptr;
  float* dout = nullptr;
  const size_t tile = kN * kN * sizeof(bf16);
  ASSERT_EQ(cudaMalloc(&da, tile), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dx, tile), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, tile), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, 4 * kN * kN * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(da, ba.data(), tile, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dx, bx.data(), tile, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dy, by.data(), tile, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dout, 0xff, 4 * kN * kN * sizeof(float)), cudaSuccess);  // NaN
  XT_LAUNCH(MmaLayoutKernel, 1, 32, 4 * kRowsS * kLd * sizeof(bf16), nullptr)(dout, da, dx, dy);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<float> got(4 * kN * kN);
  ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  for (void* p : {static_cast<void*>(da), static_cast<void*>(dx), static_cast<void*>(dy),
                  static_cast<void*>(dout)})
    cudaFree(p);

  for (int m = 0; m < kN; ++m)
    for (int n = 0; n < kN; ++n) {
      float axt = 0, ax = 0;
      for (int k = 0; k < kN; ++k) {
        axt += fa[m * kN + k] * fx[n * kN + k];
        ax += fa[m * kN + k] * fx[k * kN + n];
      }
      float pd = 0;
      for (int k = 0; k < kN; ++k) {
        float p = 0;
        for (int kk = 0; kk < kN; ++kk) p += fa[m * kN + kk] * fx[k * kN + kk];
        pd += p * fy[k * kN + n];
      }
      const int i = m * kN + n;
      EXPECT_EQ(got[i], axt) << "a x^T (ldmatrix, mma) at " << m << ", " << n;
      EXPECT_EQ(got[kN * kN + i], ax) << "a x (ldmatrix.trans) at " << m << ", " << n;
      EXPECT_EQ(got[2 * kN * kN + i], pd) << "C fragments as an A fragment at " << m << ", " << n;
      EXPECT_EQ(got[3 * kN * kN + i], 0.0f) << "cp.async zero fill at " << m << ", " << n;
    }
}

}  // namespace
