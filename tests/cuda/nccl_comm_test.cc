// NcclComm on one rank (the machines lent for these tests have one GPU, and NCCL runs one rank
// per GPU): every device collective of a one-rank group is a copy, the host ones go through the
// host group, Split gives a working sub-communicator. Checks the bootstrap (unique id over the
// host group), the grouped send/receive plumbing and the stream ordering. Skipped (label `cuda`)
// where no GPU is present. Several ranks need several GPUs: not covered here.
#include "xtuner/cuda/nccl_comm.h"

#include <gtest/gtest.h>

#include <vector>

#include "cuda/cuda_test_util.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

class NcclCommTest : public cudatest::CudaTest<int> {};

TEST_P(NcclCommTest, OneRankCollectivesAreCopies) {
  const int64_t n = GetParam();
  ASSERT_TRUE(cuda::SelectLocalDevice().ok());
  std::unique_ptr<Comm> host = MakeSingleComm();
  auto made = cuda::NcclComm::Create(host.get());
  ASSERT_TRUE(made.ok()) << made.status().message();
  cuda::NcclComm& c = **made;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * float(i) - 3.0f;
  const std::vector<float> zeros(n, 0.0f);
  const std::vector<int64_t> counts = {n};

  DeviceVec<float> a(x);
  c.AllReduceSum(a.p, n);
  DeviceVec<float> g(zeros), s(zeros), t(zeros), r(zeros);
  c.AllGather(g.p, a.p, counts);
  c.Gather(s.p, a.p, counts, 0);
  c.ReduceScatterSum(t.p, a.p, counts);
  c.AllToAll(r.p, counts, a.p, counts);
  DeviceVec<float> in_place(x);
  c.AllGather(in_place.p, in_place.p, counts);  // (this rank's block already in place)
  cudatest::Sync();
  EXPECT_EQ(a.Host(), x);
  EXPECT_EQ(g.Host(), x);
  EXPECT_EQ(in_place.Host(), x);
  EXPECT_EQ(s.Host(), x);
  EXPECT_EQ(t.Host(), x);
  EXPECT_EQ(r.Host(), x);

  // Host collectives through the host group.
  double d[2] = {1.5, -2.0};
  c.AllReduceSum(d, 2);
  EXPECT_EQ(d[0], 1.5);
  int64_t cnt_in[3] = {4, 0, 7}, cnt_out[3] = {};
  c.AllToAllCounts(cnt_out, cnt_in, 3);
  EXPECT_EQ(cnt_out[2], 7);
  c.Barrier();

  std::unique_ptr<Comm> sub = c.Split(0, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  DeviceVec<float> b(x);
  sub->AllReduceSum(b.p, n);
  cudatest::Sync();
  EXPECT_EQ(b.Host(), x);
}

INSTANTIATE_TEST_SUITE_P(Sizes, NcclCommTest, ::testing::Values(0, 1, 1000, 1 << 20));

// One rank uses one GPU: no two ranks share a device.
class NcclDevices : public cudatest::CudaTest<int> {};
TEST_P(NcclDevices, OneRankHasDistinctDevices) {
  std::unique_ptr<Comm> host = MakeSingleComm();
  const Status st = cuda::CheckDistinctDevices(*host);
  EXPECT_TRUE(st.ok()) << st.message();
}
INSTANTIATE_TEST_SUITE_P(OneRank, NcclDevices, ::testing::Values(1));

}  // namespace
}  // namespace xt
