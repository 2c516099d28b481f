// Ranks sharing a node share its CPUs: without OMP_NUM_THREADS, N ranks on one node run an even
// share of its cores each instead of every rank running one thread a core.
#include "xtuner/dist/node_cpus.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <string>

#include "util/cli.h"
#include "util/demo_mpi.h"
#include "util/testing.h"

namespace xt {
namespace {

TEST(NodeCpus, AnEvenShareAtMostTheRanksOwnAtLeastOne) {
  EXPECT_EQ(SharedThreadsPerRank(16, 16, 8), 2);  // unbound (mpirun --bind-to none)
  EXPECT_EQ(SharedThreadsPerRank(16, 16, 3), 5);  // a remainder stays idle
  EXPECT_EQ(SharedThreadsPerRank(1, 16, 8), 1);   // --bind-to core
  EXPECT_EQ(SharedThreadsPerRank(8, 16, 2), 8);   // --bind-to socket, one rank a socket
  EXPECT_EQ(SharedThreadsPerRank(8, 16, 8), 2);   // --bind-to socket, four ranks a socket
  EXPECT_EQ(SharedThreadsPerRank(4, 16, 4), 4);   // srun --cpus-per-task=4
  EXPECT_EQ(SharedThreadsPerRank(8, 8, 4), 2);    // a job's cpuset of 8 CPUs, unbound
  EXPECT_EQ(SharedThreadsPerRank(2, 2, 4), 1);    // more ranks than CPUs
  EXPECT_EQ(SharedThreadsPerRank(6, 6, 1), 6);
  EXPECT_EQ(SharedThreadsPerRank(0, 0, 2), 1);
}

// The run summary's "threads" line of a 2-step demo run on `np` ranks that Open MPI binds to no
// CPU (with as many ranks as cores it would bind each to one core: one thread a rank anyway).
std::string ThreadsLine(int np, int omp_threads, const std::string& name) {
  const std::string dir = testing::TempDir(name);
  testing::CliRun r =
      testing::RunMpi(np, std::string("--bind-to none timeout -k 5 120 ") + XT_XTUNER_BIN,
                      testing::DemoArgs(dir, 2, "--set checkpoint.every=0"), testing::DemoRoot(),
                      "self,vader", omp_threads);
  EXPECT_EQ(r.code, 0) << r.output;
  const size_t at = r.output.find("threads ");
  if (at == std::string::npos) return "(no threads line in: " + r.output + ")";
  const size_t end = r.output.find('\n', at);
  std::string line = r.output.substr(at, end - at);
  line.erase(0, line.find_first_not_of(' ', 8));
  return line;
}

TEST(NodeCpus, RanksWithoutOmpNumThreadsShareTheNodesCpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int cpus = CPU_COUNT(&set);  // each rank's too: none is bound
  const int want = SharedThreadsPerRank(cpus, cpus, 2);
  EXPECT_EQ(ThreadsLine(2, 0, "node_cpus_shared"),
            std::to_string(want) +
                " a rank (the node's CPUs shared by its ranks; OMP_NUM_THREADS sets it)");
  // A user's OMP_NUM_THREADS is kept, even above the share.
  EXPECT_EQ(ThreadsLine(2, 3, "node_cpus_user"), "3 a rank (OMP_NUM_THREADS)");
}

}  // namespace
}  // namespace xt
