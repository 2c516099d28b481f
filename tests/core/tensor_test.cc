#include "xtuner/core/tensor.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "util/testing.h"
#include "xtuner/core/zero_pages.h"

namespace xt {
namespace {

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f)), 1.0f);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-3.5f)), -3.5f);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: ties go to even (1.0).
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
}

TEST(DType, F16RoundTrip) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f}) {
    EXPECT_EQ(F16ToF32(F32ToF16(f)), f) << f;
  }
  EXPECT_EQ(F16ToF32(F32ToF16(1e6f)), INFINITY);
}

// Zero pages commit where written and nowhere else; CopyIntoZeros leaves zero pages of its source
// uncommitted in its destination.
TEST(ZeroPages, CommitOnlyWhereWritten) {
  const int64_t n = 1 << 20;  // 4 MiB
  // (mincore counts a page that was only read too: nothing reads before it is asked.)
  std::shared_ptr<float> a = AllocZeroPages(n, "test");
  EXPECT_EQ(testing::ResidentBytes(a.get(), n * 4), 0);
  a.get()[5000] = 1.5f;
  a.get()[n - 1] = -2.0f;
  a.get()[70000] = -0.0f;  // a negative zero is copied (it is not +0)
  const int64_t page = sysconf(_SC_PAGESIZE);
  EXPECT_EQ(testing::ResidentBytes(a.get(), n * 4), 3 * page);
  std::shared_ptr<float> b = AllocZeroPages(n, "test");
  CopyIntoZeros(b.get(), a.get(), n);
  EXPECT_EQ(testing::ResidentBytes(b.get(), n * 4), 3 * page);
  EXPECT_EQ(std::memcmp(a.get(), b.get(), n * 4), 0);
  EXPECT_TRUE(std::signbit(b.get()[70000]));
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(a.get()[i], i == 5000 ? 1.5f : i == n - 1 ? -2.0f : 0.0f);
}

TEST(Tensor, ReshapeSliceClone) {
  Tensor t = Tensor::Zeros(DType::F32, {4, 3});
  for (int i = 0; i < 12; ++i) t.f32()[i] = float(i);
  Tensor s = t.Slice0(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 3}));
  EXPECT_EQ(s.f32()[0], 3.0f);
  Tensor r = t.Reshape({2, 6});
  EXPECT_EQ(r.f32()[7], 7.0f);
  Tensor c = t.Clone();
  c.f32()[0] = 42;
  EXPECT_EQ(t.f32()[0], 0.0f);
  Tensor b = t.To(DType::BF16).ToF32();
  EXPECT_EQ(b.f32()[11], 11.0f);
}

}  // namespace
}  // namespace xt
