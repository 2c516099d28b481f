// Helpers of the CUDA ops' tests (tests/cuda/*_test.cc): device copies of host vectors, a
// fixture base that skips without a GPU, bit-level and scaled comparisons.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "xtuner/core/dtype.h"
#include "xtuner/cuda/device.h"
#include "xtuner/model/params.h"

namespace xt::cudatest {

// A device copy of a host vector (T: float or int32_t), freed with the object. Never allocates
// zero bytes, so p is valid even for an empty vector.
template <class T>
struct DeviceVec {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceVec(const std::vector<T>& h) : n(h.size()) {
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  ~DeviceVec() { cudaFree(p); }
  std::vector<T> Host() const {
    std::vector<T> h(n);
    if (n) {
      EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return h;
  }
};

// Fixture base: skipped (reported as such by ctest) where no GPU is usable.
template <class Param>
class CudaTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    std::string why;
    if (!cuda::DeviceAvailable(&why)) GTEST_SKIP() << "skipped: no GPU (" << why << ")";
  }
};

// Waits for the device and fails the test on an asynchronous error.
inline void Sync() { ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess); }

// Bit-identical float vectors (NaNs included: compared as bits).
inline void ExpectBitEqual(const std::vector<float>& got, const std::vector<float>& want,
                           const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
        << what << " element " << i << ": " << got[i] << " vs " << want[i];
}

// got (bf16 bits) == want (fp32) rounded to nearest even (F32ToBf16, ToBf16's rounding), for
// every element: a kernel's bf16 output against its fp32 output.
inline void ExpectRoundedBitForBit(const std::vector<uint16_t>& got, const std::vector<float>& want,
                                   const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], F32ToBf16(want[i])) << what << " element " << i << ": " << want[i];
}

// |got - want| <= rel * scale + 1e-30 per element, scale[i] the magnitude the result is
// computed from (|want| itself, or the sum of the magnitudes of its terms where they cancel).
inline void ExpectNearScaled(const std::vector<float>& got, const std::vector<float>& want,
                             const std::vector<double>& scale, double rel, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_EQ(scale.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << what << " element " << i;
      continue;
    }
    ASSERT_NEAR(double(got[i]), double(want[i]), rel * scale[i] + 1e-30)
        << what << " element " << i << " (scale " << scale[i] << ")";
  }
}

// ExpectNearScaled with scale = |want|.
inline void ExpectNearRel(const std::vector<float>& got, const std::vector<float>& want, double rel,
                          const char* what) {
  std::vector<double> scale(want.size());
  for (size_t i = 0; i < want.size(); ++i) scale[i] = std::abs(double(want[i]));
  ExpectNearScaled(got, want, scale, rel, what);
}

// n normal floats of standard deviation `scale`, reproducible from the seed.
inline std::vector<float> RandomNormal(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ||got - want|| / ||want|| (the plain norm of the difference when want is 0).
inline double RelErr(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Every parameter's gradient on its own (a small tensor, e.g. a router or a norm, could hide in
// the norm of the whole slab): relative to the tensor's norm, with a floor for near-zero ones.
inline void ExpectSameGradients(const ParamLayout& layout, const float* got, const float* want,
                                double rel, const std::string& what) {
  for (const ParamInfo& p : layout.params()) {
    const int64_t n = NumElements(p.shape);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = double(got[p.offset + i]) - want[p.offset + i];
      num += d * d;
      den += double(want[p.offset + i]) * want[p.offset + i];
    }
    EXPECT_LE(std::sqrt(num), rel * std::sqrt(den) + 1e-7) << what << ": " << p.name;
  }
}

}  // namespace xt::cudatest
