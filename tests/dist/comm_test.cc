// Comm: the single-rank implementation directly, and Open MPI's under mpirun on 2, 3 and 4
// ranks (tests/dist/comm_selftest.cc checks each collective on every rank, and ZeRO-3's packed
// LoRA gradients on every mesh).
#include "xtuner/dist/comm.h"

#include <gtest/gtest.h>

#include "util/cli.h"

namespace xt {
namespace {

TEST(Comm, SingleRankCollectivesAreCopies) {
  std::unique_ptr<Comm> c = MakeSingleComm();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> send = {1, 2, 3}, recv(3);
  c->AllGather(recv.data(), send.data(), {3});
  EXPECT_EQ(recv, send);
  recv.assign(3, 0);
  c->ReduceScatterSum(recv.data(), send.data(), {3});
  EXPECT_EQ(recv, send);
  recv.assign(3, 0);
  c->AllToAll(recv.data(), {3}, send.data(), {3});
  EXPECT_EQ(recv, send);
  double d = 2;
  c->AllReduceSum(&d, 1);
  EXPECT_EQ(d, 2);
  EXPECT_EQ(c->Split(0, 0)->size(), 1);
}

TEST(Comm, SelfTestAloneIsOneRank) {
  testing::CliRun r = testing::RunMpi(1, XT_COMM_SELFTEST_BIN, "");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("comm ok on 1 ranks"), std::string::npos) << r.output;
}

class CommMpi : public ::testing::TestWithParam<int> {};

TEST_P(CommMpi, EveryCollectiveOnEveryRank) {
  testing::CliRun r = testing::RunMpi(GetParam(), XT_COMM_SELFTEST_BIN, "");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("comm ok on " + std::to_string(GetParam()) + " ranks"), std::string::npos)
      << r.output;
}

INSTANTIATE_TEST_SUITE_P(Ranks, CommMpi, ::testing::Values(2, 3, 4));

}  // namespace
}  // namespace xt
