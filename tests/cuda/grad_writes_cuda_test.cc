// GradWrites (cuda/grad_writes.h): in a blank unit the first write of a range assigns (beta 0) and
// later ones add; Prepare zeroes a range once, before its first write; Close zeroes exactly what
// was never written and keeps the rest; a unit that came with contents is added into and left
// alone. Skipped (label `cuda`) where no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/grad_writes.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

class GradWritesCuda : public cudatest::CudaTest<int> {};

TEST_P(GradWritesCuda, ClosingZeroesExactlyWhatWasNotWritten) {
  const int64_t n = 100 + GetParam();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  DeviceVec<float> blank{std::vector<float>(n, nan)}, full{std::vector<float>(n, 5.0f)};
  cuda::GradWrites w;
  w.Open(blank.p, n, true);
  w.Open(full.p, n, false);
  EXPECT_EQ(w.Beta(nullptr, 0), 1.0f);  // an empty write: nothing to assign
  EXPECT_EQ(w.Beta(blank.p + 10, 20), 0.0f);
  EXPECT_EQ(w.Beta(blank.p + 10, 20), 1.0f);  // the second write adds
  const std::vector<float> ones(20, 1.0f);
  ASSERT_EQ(cudaMemcpy(blank.p + 10, ones.data(), 20 * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_TRUE(w.Prepare(blank.p + 50, 5, nullptr).ok());  // zeroed: a kernel adds into it
  cudatest::Sync();
  std::vector<float> mid = blank.Host();
  for (int64_t i = 50; i < 55; ++i) EXPECT_EQ(mid[i], 0.0f) << i;
  const std::vector<float> twos(5, 2.0f);
  ASSERT_EQ(cudaMemcpy(blank.p + 50, twos.data(), 5 * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_TRUE(w.Prepare(blank.p + 50, 5, nullptr).ok());  // written: not zeroed again
  EXPECT_EQ(w.Beta(full.p, n), 1.0f);                     // came with contents: adds
  ASSERT_TRUE(w.Prepare(full.p + 3, 4, nullptr).ok());    // ... and is never zeroed
  ASSERT_TRUE(w.Close(blank.p, nullptr).ok());
  ASSERT_TRUE(w.Close(full.p, nullptr).ok());
  cudatest::Sync();
  const std::vector<float> got = blank.Host();
  for (int64_t i = 0; i < n; ++i) {
    const float want = i >= 10 && i < 30 ? 1.0f : i >= 50 && i < 55 ? 2.0f : 0.0f;
    ASSERT_EQ(got[i], want) << "element " << i;
  }
  for (float v : full.Host()) ASSERT_EQ(v, 5.0f);
  // Closed units are forgotten: the same buffer opens again for the next step.
  w.Open(blank.p, n, true);
  EXPECT_EQ(w.Beta(blank.p + 10, 20), 0.0f);
  ASSERT_TRUE(w.Close(blank.p, nullptr).ok());
}

// A tail written last (the gap before it zeroed) and a unit written from its first element.
INSTANTIATE_TEST_SUITE_P(Sizes, GradWritesCuda, ::testing::Values(0, 1, 77));

}  // namespace
}  // namespace xt
