// The OpenMP threads xtuner chooses where OMP_NUM_THREADS is unset: the ranks of a node share its
// CPUs, and a container's CPU quota caps them.
#include "xtuner/dist/node_cpus.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "util/cli.h"
#include "util/demo_mpi.h"
#include "util/testing.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

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

void Write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

TEST(NodeCpus, TheQuotaIsTheSmallestOnTheWayFromTheCgroupToTheRoot) {
  const fs::path root = testing::TempDir("cgroup_quota");
  // cgroup v2: the process in /kubepods/pod/ctr; the pod allows 2.5 CPUs, the container 4.
  const fs::path v2 = root / "v2";
  Write(root / "self_v2", "0::/kubepods/pod/ctr\n");
  Write(v2 / "kubepods" / "pod" / "ctr" / "cpu.max", "400000 100000\n");
  Write(v2 / "kubepods" / "pod" / "cpu.max", "250000 100000\n");
  Write(v2 / "kubepods" / "cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuQuota(v2.string(), (root / "self_v2").string()), 3);
  Write(v2 / "kubepods" / "pod" / "cpu.max", "800000 100000\n");
  EXPECT_EQ(CgroupCpuQuota(v2.string(), (root / "self_v2").string()), 4);
  Write(v2 / "kubepods" / "pod" / "cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuQuota(v2.string(), (root / "self_v2").string()), 4);
  // A container's own mount: its path is not under the root, whose own file counts.
  Write(root / "self_ns", "0::/docker/abc\n");
  Write(v2 / "cpu.max", "150000 100000\n");
  EXPECT_EQ(CgroupCpuQuota(v2.string(), (root / "self_ns").string()), 2);
  Write(v2 / "cpu.max", "max 100000\n");
  EXPECT_EQ(CgroupCpuQuota(v2.string(), (root / "self_ns").string()), 0);
  Write(v2 / "cpu.max", "garbage\n");
  EXPECT_EQ(CgroupCpuQuota(v2.string(), (root / "self_ns").string()), 0);
  // cgroup v1: the cpu controller's hierarchy ("cpu,cpuacct"), -1 where there is none.
  const fs::path v1 = root / "v1";
  Write(root / "self_v1", "4:memory:/job\n3:cpu,cpuacct:/job/step\n0::/\n");
  Write(v1 / "cpu" / "job" / "step" / "cpu.cfs_quota_us", "-1\n");
  Write(v1 / "cpu" / "job" / "step" / "cpu.cfs_period_us", "100000\n");
  Write(v1 / "cpu" / "job" / "cpu.cfs_quota_us", "600000\n");
  Write(v1 / "cpu" / "job" / "cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuQuota(v1.string(), (root / "self_v1").string()), 6);
  Write(v1 / "cpu" / "job" / "cpu.cfs_quota_us", "-1\n");
  EXPECT_EQ(CgroupCpuQuota(v1.string(), (root / "self_v1").string()), 0);
  // Nothing to read.
  EXPECT_EQ(CgroupCpuQuota((root / "none").string(), (root / "no_self").string()), 0);
}

// The CPUs this process may run on (those of every rank Open MPI leaves unbound), capped by the
// quota as xtuner caps them.
int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  const int quota = CgroupCpuQuota();
  return quota > 0 ? std::min(CPU_COUNT(&set), quota) : CPU_COUNT(&set);
}

// The run summary's "threads" line in `output`.
std::string ThreadsLine(const testing::CliRun& r) {
  EXPECT_EQ(r.code, 0) << r.output;
  const size_t at = r.output.find("threads ");
  if (at == std::string::npos) return "(no threads line in: " + r.output + ")";
  const size_t end = r.output.find('\n', at);
  std::string line = r.output.substr(at, end - at);
  line.erase(0, line.find_first_not_of(' ', 8));
  return line;
}

// A 2-step demo run on `np` ranks that Open MPI binds to no CPU (with as many ranks as cores it
// binds each to one core: one thread a rank anyway). `program`'s place may start with mpirun's
// own options.
testing::CliRun Demo(int np, int omp_threads, const std::string& name,
                     const std::string& before = "") {
  return testing::RunMpi(
      np, "--bind-to none " + before + "timeout -k 5 120 " + std::string(XT_XTUNER_BIN),
      testing::DemoArgs(testing::TempDir(name), 2, "--set checkpoint.every=0"), testing::DemoRoot(),
      "self,vader", omp_threads);
}

TEST(NodeCpus, RanksWithoutOmpNumThreadsShareTheNodesCpus) {
  const int cpus = UsableCpus();
  if (cpus < 2) GTEST_SKIP() << "skipped: one CPU, where sharing and OpenMP's default agree";
  EXPECT_EQ(ThreadsLine(Demo(2, 0, "node_cpus_shared")),
            std::to_string(SharedThreadsPerRank(cpus, cpus, 2)) + " (" + std::to_string(cpus) +
                " CPUs on this node shared by its 2 ranks; OMP_NUM_THREADS sets it)");
  // A user's OMP_NUM_THREADS is kept, even above the share.
  EXPECT_EQ(ThreadsLine(Demo(2, 3, "node_cpus_user")), "3 (OMP_NUM_THREADS)");
}

// Every rank takes part in finding its node's ranks, whatever its own environment: rank 0 with
// OMP_NUM_THREADS and rank 1 without (mpirun's "A : B" starts one of each) do not hang.
TEST(NodeCpus, RanksThatDisagreeOnOmpNumThreadsStillAgreeOnTheCollective) {
  const std::string args =
      testing::DemoArgs(testing::TempDir("node_cpus_mixed"), 2, "--set checkpoint.every=0");
  const std::string xtuner = "timeout -k 5 120 " + std::string(XT_XTUNER_BIN);
  const testing::CliRun r =
      testing::RunMpi(1, "env OMP_NUM_THREADS=2 " + xtuner + " " + args + " : -np 1 " + xtuner,
                      args, testing::DemoRoot(), "self,vader", 0);
  EXPECT_EQ(ThreadsLine(r), "2 (OMP_NUM_THREADS)");
}

// One process: the CPUs it may run on, capped by the quota; the user's count where given.
TEST(NodeCpus, OneProcessRunsItsCpusCappedByTheQuota) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int quota = CgroupCpuQuota(), cpus = UsableCpus();
  const std::string want =
      std::to_string(cpus) +
      (quota > 0 && quota < CPU_COUNT(&set) ? " (the CPU quota of this cgroup"
                                            : " (the CPUs this process may run on") +
      "; OMP_NUM_THREADS sets it)";
  const auto run = [](const std::string& env, const std::string& name) {
    return testing::RunShell(
        env + " " + std::string(XT_XTUNER_BIN) + " " +
            testing::DemoArgs(testing::TempDir(name), 2, "--set checkpoint.every=0") + " 2>&1",
        testing::DemoRoot());
  };
  EXPECT_EQ(ThreadsLine(run("env -u OMP_NUM_THREADS", "node_cpus_one")), want);
  EXPECT_EQ(ThreadsLine(run("OMP_NUM_THREADS=1", "node_cpus_one_user")), "1 (OMP_NUM_THREADS)");
}

}  // namespace
}  // namespace xt
