// StagedComm (parallel.gpu_comm = "mpi") on one rank: every device collective of a one-rank group
// is a copy through the host, zero counts included; it reads a buffer only after the work queued
// on its stream, and Split gives a working sub-communicator. Several ranks sharing a GPU:
// tests/dist/train_mpi_test.cc (GpuMeshesFollowTheCpuRun). Skipped where no GPU is present.
#include "xtuner/cuda/staged_comm.h"

#include <gtest/gtest.h>

#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/loss_cuda.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

class StagedCommTest : public cudatest::CudaTest<int> {};

TEST_P(StagedCommTest, OneRankCollectivesAreCopiesAfterTheQueuedWork) {
  const int64_t n = GetParam();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  std::unique_ptr<Comm> host = MakeSingleComm();
  std::unique_ptr<Comm> c = cuda::MakeStagedComm(host.get(), stream);
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> x(n), twice(n);
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * float(i) - 3.0f, twice[i] = 2 * x[i];
  const std::vector<float> zeros(n, 0.0f);
  const std::vector<int64_t> counts = {n};

  // a = 2x, queued on the stream right before the collective that reads it.
  DeviceVec<float> a(x);
  ASSERT_TRUE(cuda::AddInPlace(a.p, a.p, n, stream).ok());
  c->AllReduceSum(a.p, n);
  DeviceVec<float> g(zeros), s(zeros), t(zeros), r(zeros);
  c->AllGather(g.p, a.p, counts);
  c->Gather(s.p, a.p, counts, 0);
  c->ReduceScatterSum(t.p, a.p, counts);
  c->AllToAll(r.p, counts, a.p, counts);
  DeviceVec<float> in_place(zeros);
  ASSERT_TRUE(cuda::AddInPlace(in_place.p, a.p, n, stream).ok());  // queued before the gather
  c->AllGather(in_place.p, in_place.p, counts);  // (this rank's block already in place)
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(a.Host(), twice);
  EXPECT_EQ(g.Host(), twice);
  EXPECT_EQ(in_place.Host(), twice);
  EXPECT_EQ(s.Host(), twice);
  EXPECT_EQ(t.Host(), twice);
  EXPECT_EQ(r.Host(), twice);

  // Host collectives through the host group; a sub-group works the same way.
  double d[2] = {1.5, -2.0};
  c->AllReduceSum(d, 2);
  EXPECT_EQ(d[0], 1.5);
  std::unique_ptr<Comm> sub = c->Split(0, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  DeviceVec<float> u(zeros);
  sub->AllGather(u.p, a.p, counts);
  EXPECT_EQ(u.Host(), twice);
  c->Barrier();
  sub.reset();
  c.reset();
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(Sizes, StagedCommTest, ::testing::Values(0, 1, 1000, 1 << 20));

}  // namespace
}  // namespace xt
