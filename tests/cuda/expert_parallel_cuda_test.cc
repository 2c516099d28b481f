// Expert parallelism's device row moves (cuda/expert_parallel_cuda.h) against the CPU's
// (dist/expert_parallel.h) on one rank: an exchange plan whose regrouping is a shuffled
// permutation (what several source ranks give), so the gathers by EpRowMaps are exercised even
// though the all-to-all of a one-rank group is a copy. The row maps themselves are host code and
// are checked without a GPU. Several ranks need several GPUs: tests/dist/train_mpi_test.cc.
#include "xtuner/cuda/expert_parallel_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/nccl_comm.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// A one-rank plan of R rows whose received order is a shuffle of the grouped order.
EpExchange ShuffledPlan(int64_t R, uint32_t seed) {
  EpExchange x;
  x.send_rows = {R};
  x.recv_rows = {R};
  x.local_offsets = {0, int32_t(R / 3), int32_t(R)};
  x.to_grouped.resize(R);
  std::iota(x.to_grouped.begin(), x.to_grouped.end(), 0);
  std::shuffle(x.to_grouped.begin(), x.to_grouped.end(), std::mt19937(seed));
  return x;
}

TEST(EpRowMaps, AreTheRegroupingAndItsInverse) {
  for (int64_t R : {0, 1, 7, 300}) {
    const EpExchange x = ShuffledPlan(R, 3);
    auto maps = cuda::MakeEpRowMaps(x);
    ASSERT_TRUE(maps.ok()) << maps.status().message();
    ASSERT_EQ(int64_t(maps->grouped_of_received.size()), R);
    ASSERT_EQ(int64_t(maps->received_of_grouped.size()), R);
    for (int64_t i = 0; i < R; ++i) {
      EXPECT_EQ(maps->grouped_of_received[i], x.to_grouped[i]);
      EXPECT_EQ(maps->received_of_grouped[maps->grouped_of_received[i]], i);
    }
  }
}

TEST(EpRowMaps, ARegroupingThatIsNotAPermutationIsAnError) {
  EpExchange x = ShuffledPlan(5, 1);
  x.to_grouped[2] = x.to_grouped[3];  // a row twice, another never
  auto maps = cuda::MakeEpRowMaps(x);
  ASSERT_FALSE(maps.ok());
  EXPECT_NE(maps.status().message().find("not a permutation"), std::string::npos);
  x = ShuffledPlan(5, 1);
  x.to_grouped[0] = 5;  // out of range
  EXPECT_FALSE(cuda::MakeEpRowMaps(x).ok());
}

class ExpertParallelCuda : public cudatest::CudaTest<int> {};

// Dispatch then combine on the device equal the CPU's, bit for bit (they only move rows).
TEST_P(ExpertParallelCuda, DispatchAndCombineMoveRowsAsTheCpu) {
  const int64_t R = GetParam(), H = 24;
  ASSERT_TRUE(cuda::SelectLocalDevice().ok());
  std::unique_ptr<Comm> host = MakeSingleComm();
  auto nccl = cuda::NcclComm::Create(host.get());
  ASSERT_TRUE(nccl.ok()) << nccl.status().message();
  const EpExchange x = ShuffledPlan(R, 11);
  auto maps = cuda::MakeEpRowMaps(x);
  ASSERT_TRUE(maps.ok());
  std::vector<float> xs(R * H);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = float(i % 97) * 0.25f - 7.0f;
  std::vector<float> want_xr(R * H), want_ys(R * H);
  ExpertDispatch(*host, x, xs.data(), H, want_xr.data());
  ExpertCombine(*host, x, want_xr.data(), H, want_ys.data());

  DeviceVec<int32_t> received_of_grouped(maps->received_of_grouped);
  DeviceVec<int32_t> grouped_of_received(maps->grouped_of_received);
  DeviceVec<float> d_xs(xs), d_xr(std::vector<float>(R * H)), d_ys(std::vector<float>(R * H));
  ASSERT_TRUE(
      cuda::ExpertDispatchCuda(**nccl, x, received_of_grouped.p, d_xs.p, H, d_xr.p, nullptr).ok());
  ASSERT_TRUE(
      cuda::ExpertCombineCuda(**nccl, x, grouped_of_received.p, d_xr.p, H, d_ys.p, nullptr).ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(d_xr.Host(), want_xr, "dispatched rows");
  cudatest::ExpectBitEqual(d_ys.Host(), want_ys, "combined rows");
  EXPECT_EQ(want_ys, xs);  // there and back: the rows in their first order

  // bf16 rows (bf16 mode) travel as float pairs: the same rows, bit for bit, where the CPU's
  // dispatch moves each element (an element's index, exact in a float, traced through it).
  std::vector<uint16_t> xs16(R * H), want_xr16(R * H);
  std::vector<float> index(R * H), moved(R * H);
  for (size_t i = 0; i < xs.size(); ++i) {
    xs16[i] = F32ToBf16(xs[i] + 1e-3f * float(i % 7));
    index[i] = float(i);
  }
  // Pairs that, read as one float, are a denormal (x, +0) and a signalling NaN (0x7f81 above):
  // the collective must move their bits untouched.
  if (xs16.size() >= 4) xs16[0] = F32ToBf16(1.5f), xs16[1] = 0, xs16[2] = 0x1234, xs16[3] = 0x7f81;
  ExpertDispatch(*host, x, index.data(), H, moved.data());
  for (size_t i = 0; i < moved.size(); ++i) want_xr16[i] = xs16[size_t(moved[i])];
  DeviceVec<uint16_t> d_xs16(xs16), d_xr16(std::vector<uint16_t>(R * H));
  ASSERT_TRUE(
      cuda::ExpertDispatchCuda(**nccl, x, received_of_grouped.p, d_xs16.p, H, d_xr16.p, nullptr)
          .ok());
  cudatest::Sync();
  EXPECT_EQ(d_xr16.Host(), want_xr16) << "dispatched bf16 rows";
  DeviceVec<uint16_t> odd(std::vector<uint16_t>(R * 3));
  const Status s =
      cuda::ExpertDispatchCuda(**nccl, x, received_of_grouped.p, odd.p, 3, odd.p, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("bf16 rows of odd width 3"), std::string::npos) << s.message();
}

INSTANTIATE_TEST_SUITE_P(Rows, ExpertParallelCuda, ::testing::Values(0, 1, 5, 1000));

}  // namespace
}  // namespace xt
