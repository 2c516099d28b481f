// Distributed training when a rank fails, as a user meets it under `mpirun -np N xtuner train`
// (the demo job): a rank that dies or fails ends the job with a message naming it, and the
// checkpoint it was writing is not marked latest; a rank killed mid-step ends the job within
// seconds; Slurm's SIGTERM reaches every rank, which stop after the same step with a checkpoint.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "util/cli.h"
#include "util/demo_mpi.h"
#include "util/testing.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using testing::CliRun;

const std::string& kRoot = testing::DemoRoot();
using testing::DemoArgs;

bool FindStep20(const std::string& out) { return out.find("step 20/20") != std::string::npos; }

// Rank 1 alone may not write more than 16 KiB: its first checkpoint shard is larger.
std::string LimitRank1(bool ignore_signal) {
  return std::string("sh -c '") + (ignore_signal ? "trap \"\" XFSZ; " : "") +
         "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then ulimit -f 32; fi; exec timeout -k 5 120 " +
         XT_XTUNER_BIN + " \"$@\"' xtuner";
}

TEST(Distributed, ARankKilledWhileSavingEndsTheJobAndLeavesNoLatest) {
  const std::string dir = testing::TempDir("mpi_die_save");
  // Rank 1 is killed by SIGXFSZ in the middle of writing its shard of step 2. (TCP between the
  // ranks: the shared-memory transport's files would hit the limit first.)
  CliRun r = testing::RunMpi(2, LimitRank1(false), DemoArgs(dir, 20, "--set checkpoint.every=2"),
                             kRoot, "self,tcp");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("process rank 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("File size limit exceeded"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/step-00000002")) << r.output;
  EXPECT_EQ(FindStep20(r.output), false) << r.output;
}

TEST(Distributed, ARankFailingToSaveEndsTheJobNamingItAndTheCause) {
  const std::string dir = testing::TempDir("mpi_fail_save");
  // The same full disk, but rank 1 sees the write fail (EFBIG) instead of being killed.
  CliRun r = testing::RunMpi(2, LimitRank1(true), DemoArgs(dir, 20, "--set checkpoint.every=2"),
                             kRoot, "self,tcp");
  EXPECT_NE(r.code, 0) << r.output;
  // Whichever rank ends the job first names rank 1 and its cause.
  EXPECT_NE(r.output.find(": rank 1: cannot write"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("shard-00001-of-00002"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("earlier checkpoints are intact"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/step-00000002")) << r.output;
}

// A long job under mpirun, in the background: its pid (mpirun's), output into log.
pid_t StartLongJob(const std::string& dir, const std::string& log) {
  const pid_t mpirun = fork();
  if (mpirun != 0) return mpirun;
  std::freopen(log.c_str(), "w", stdout);
  std::freopen(log.c_str(), "a", stderr);
  if (chdir(kRoot.c_str()) != 0) _exit(99);
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMPI_MCA_btl", "self,vader", 1);
  const std::string cmd = std::string("exec mpirun --oversubscribe -np 2 ") + XT_XTUNER_BIN + " " +
                          DemoArgs(dir + "/run", 100000, "--set schedule.warmup_steps=1");
  execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
  _exit(98);
}

// Waits for the job's first step, then returns its ranks (mpirun's children).
std::vector<pid_t> RanksAfterFirstStep(pid_t mpirun, const std::string& dir) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline && !fs::exists(dir + "/run/metrics.jsonl"))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // mid-run
  std::vector<pid_t> ranks;
  FILE* p = popen(("pgrep -P " + std::to_string(mpirun)).c_str(), "r");
  if (!p) return ranks;
  for (long pid; std::fscanf(p, "%ld", &pid) == 1;) ranks.push_back(pid_t(pid));
  pclose(p);
  return ranks;
}

// Waits up to `limit` for mpirun; kills everything and returns false if it is still running.
bool WaitFor(pid_t mpirun, const std::vector<pid_t>& ranks, std::chrono::seconds limit,
             int* status) {
  const auto t0 = std::chrono::steady_clock::now();
  pid_t done = 0;
  while ((done = waitpid(mpirun, status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() - t0 < limit)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (done != 0) return true;
  kill(mpirun, SIGKILL);
  for (pid_t r : ranks) kill(r, SIGKILL);
  waitpid(mpirun, status, 0);
  return false;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(Distributed, ARankKilledMidStepEndsTheJobWithinSeconds) {
  const std::string dir = testing::TempDir("mpi_kill");
  const pid_t mpirun = StartLongJob(dir, dir + "/log.txt");
  ASSERT_GT(mpirun, 0);
  const std::vector<pid_t> ranks = RanksAfterFirstStep(mpirun, dir);
  ASSERT_EQ(ranks.size(), 2u);
  const auto t_kill = std::chrono::steady_clock::now();
  kill(ranks[1], SIGKILL);
  int status = 0;
  ASSERT_TRUE(WaitFor(mpirun, ranks, std::chrono::seconds(60), &status))
      << "the job did not end within 60 s of a rank's death";
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_kill).count();
  const std::string output = ReadAll(dir + "/log.txt");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << output;
  // mpirun names the first process it saw end: usually the killed one ("exited on signal 9
  // (Killed)"), under load sometimes the other, aborted by MPI for its lost peer.
  EXPECT_NE(output.find("mpirun noticed that process rank"), std::string::npos) << output;
  EXPECT_NE(output.find("exited on signal"), std::string::npos) << output;
  EXPECT_LT(seconds, 30) << output;
  // The other rank is gone too within seconds (or a zombie waiting for init to reap it): mpirun
  // may exit while it is still being killed.
  auto alive = [&] {
    std::ifstream stat("/proc/" + std::to_string(ranks[0]) + "/stat");
    std::string pid, comm, state;
    return bool(stat >> pid >> comm >> state) && state != "Z";
  };
  const auto t_end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (alive() && std::chrono::steady_clock::now() < t_end)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(alive()) << "the other rank is still running 10 s after the job ended";
}

// Slurm's SIGTERM before a time limit reaches every rank: all stop after the same step, with a
// checkpoint, and exit cleanly. (MPI's own threads must not take the signal.)
TEST(Distributed, SigtermToTheRanksSavesACheckpointAndExitsCleanly) {
  const std::string dir = testing::TempDir("mpi_term");
  const pid_t mpirun = StartLongJob(dir, dir + "/log.txt");
  ASSERT_GT(mpirun, 0);
  const std::vector<pid_t> ranks = RanksAfterFirstStep(mpirun, dir);
  ASSERT_EQ(ranks.size(), 2u);
  for (pid_t r : ranks) kill(r, SIGTERM);
  int status = 0;
  ASSERT_TRUE(WaitFor(mpirun, ranks, std::chrono::seconds(60), &status));
  const std::string output = ReadAll(dir + "/log.txt");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_NE(output.find("interrupted at step"), std::string::npos) << output;
  bool saved = false;
  for (const auto& e : fs::directory_iterator(dir + "/run/checkpoints"))
    saved |= fs::exists(e.path() / "shards.json") && fs::exists(e.path() / "trainer_state.json");
  EXPECT_TRUE(saved) << output;
}

}  // namespace
}  // namespace xt
