// The column moves of multi-head latent attention on the GPU (CopyColumns, SumHeadColumns)
// against their CPU twins (ops::copy_columns, ops::sum_head_columns), bit for bit: every order,
// one input row to several output rows, strides and offsets that leave other columns alone, the
// sum in the CPU's head order. Skipped (label `cuda`) where no GPU is present, except the
// argument checks (no device needed).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;
using ops::ColumnOrder;

std::vector<float> Random(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// (rows N, width, repeat)
class ColumnsCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(ColumnsCuda, CopyColumnsBitIdenticalToTheCpu) {
  const auto [N, width, repeat] = GetParam();
  // Output rows wider than the copy, at an offset; input rows likewise: the other columns keep
  // their (random) contents.
  const int64_t out_stride = width + 5, out_at = 3, in_stride = width + 7, in_at = 2;
  const int64_t in_rows = (N + repeat - 1) / repeat;
  const std::vector<float> in = Random(in_rows * in_stride, unsigned(N * 7 + width));
  for (ColumnOrder order :
       {ColumnOrder::kSame, ColumnOrder::kDeinterleave, ColumnOrder::kInterleave}) {
    SCOPED_TRACE("order " + std::to_string(int(order)));
    std::vector<float> want = Random(N * out_stride, unsigned(N + 3 * width + int(order)));
    DeviceVec<float> gin(in), gout(want);
    ops::copy_columns(want.data(), out_stride, out_at, in.data(), in_stride, in_at, N, width, order,
                      repeat);
    ASSERT_TRUE(cuda::CopyColumns(gout.p, out_stride, out_at, gin.p, in_stride, in_at, N, width,
                                  order, repeat)
                    .ok());
    cudatest::Sync();
    cudatest::ExpectBitEqual(gout.Host(), want, "copy_columns");
  }
}

TEST_P(ColumnsCuda, SumHeadColumnsBitIdenticalToTheCpu) {
  const auto [T, width, Hn] = GetParam();
  const int64_t stride = width + 9, at = 4;
  const std::vector<float> in = Random(T * Hn * stride, unsigned(T * 5 + Hn));
  std::vector<float> want(T * width, 7.0f);  // assigned: the 7s must go
  DeviceVec<float> gin(in), gout(want);
  ops::sum_head_columns(want.data(), in.data(), stride, at, T, Hn, width);
  ASSERT_TRUE(cuda::SumHeadColumns(gout.p, gin.p, stride, at, T, Hn, width).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout.Host(), want, "sum_head_columns");
}

// The copies RoPE's pair orders make are each other's inverse (what the MLA backward relies on).
TEST(Columns, DeinterleaveThenInterleaveIsTheIdentity) {
  const int64_t N = 3, width = 8;
  const std::vector<float> x = Random(N * width, 5);
  std::vector<float> y(N * width), z(N * width);
  ops::copy_columns(y.data(), width, 0, x.data(), width, 0, N, width, ColumnOrder::kDeinterleave);
  EXPECT_EQ(y[0], x[0]);
  EXPECT_EQ(y[1], x[2]);          // the even dims first
  EXPECT_EQ(y[width / 2], x[1]);  // then the odd ones
  ops::copy_columns(z.data(), width, 0, y.data(), width, 0, N, width, ColumnOrder::kInterleave);
  EXPECT_EQ(z, x);
}

TEST(ColumnsCudaArguments, BadSizesAreErrors) {
  float* p = nullptr;
  const Status odd = cuda::CopyColumns(p, 4, 0, p, 4, 0, 2, 3, ColumnOrder::kDeinterleave);
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.message().find("odd width (3)"), std::string::npos) << odd.message();
  const Status repeat = cuda::CopyColumns(p, 4, 0, p, 4, 0, 2, 4, ColumnOrder::kSame, 0);
  ASSERT_FALSE(repeat.ok());
  EXPECT_NE(repeat.message().find("repeat must be >= 1"), std::string::npos) << repeat.message();
  EXPECT_FALSE(cuda::SumHeadColumns(p, p, 4, 0, -1, 2, 4).ok());
  EXPECT_TRUE(cuda::CopyColumns(p, 4, 0, p, 4, 0, 0, 4, ColumnOrder::kSame).ok());  // no rows
}

INSTANTIATE_TEST_SUITE_P(Shapes, ColumnsCuda,
                         ::testing::Values(std::make_tuple(1, 2, 1), std::make_tuple(7, 8, 1),
                                           std::make_tuple(12, 64, 4), std::make_tuple(13, 6, 3),
                                           std::make_tuple(300, 32, 128)));

}  // namespace
}  // namespace xt
