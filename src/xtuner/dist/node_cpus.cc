// ChooseCpuThreads: the node's ranks found with MPI_Comm_split_type (the ranks sharing memory),
// the CPUs they may run on by OR-ing their affinity masks, the quota from the cgroup's files.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include "xtuner/dist/node_cpus.h"

#include <mpi.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <vector>

#include "xtuner/dist/comm.h"

namespace xt {

namespace {

// Where the count came from: ChooseCpuThreads' last choice, for DescribeThreads.
std::string g_source;

bool UserSetThreads() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  return v && *v;
}

// The first two whitespace-separated words of a file; false where it cannot be read.
bool ReadWords(const std::string& path, std::string* a, std::string* b) {
  std::ifstream in(path);
  return bool(in >> *a) && (b == nullptr || bool(in >> *b));
}

int64_t ToInt(const std::string& s) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  return end && *end == '\0' && !s.empty() ? int64_t(v) : -1;
}

int CeilCpus(int64_t quota, int64_t period) {
  if (quota <= 0 || period <= 0) return 0;
  return int(std::min<int64_t>((quota + period - 1) / period, 1 << 20));
}

// The CPUs this process may run on, one byte each (1: may run there); false where the mask cannot
// be read (more CPUs than a cpu_set_t holds).
bool AffinityBytes(std::vector<uint8_t>* mask) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const bool known = sched_getaffinity(0, sizeof set, &set) == 0;
  mask->assign(CPU_SETSIZE, 0);
  for (int c = 0; known && c < CPU_SETSIZE; ++c) (*mask)[c] = CPU_ISSET(c, &set) ? 1 : 0;
  return known;
}

int Count(const std::vector<uint8_t>& mask) {
  return int(std::count(mask.begin(), mask.end(), uint8_t(1)));
}

}  // namespace

int SharedThreadsPerRank(int rank_cpus, int node_cpus, int ranks_on_node) {
  return std::max(1, std::min(rank_cpus, node_cpus / std::max(1, ranks_on_node)));
}

int CgroupCpuQuota(const std::string& root, const std::string& self) {
  // This process's cgroup: cgroup v2's line "0::PATH", or v1's "N:...,cpu,...:PATH".
  std::ifstream in(self);
  std::string line, v2_path, v1_path;
  bool v2 = false, v1 = false;
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string controllers(1, ',');  // ",cpu,cpuacct,": each name between commas
    controllers.append(line, a + 1, b - a - 1).push_back(',');
    if (line.compare(0, a, "0") == 0 && controllers == ",,")
      v2 = true, v2_path = line.substr(b + 1);
    if (controllers.find(",cpu,") != std::string::npos) v1 = true, v1_path = line.substr(b + 1);
  }
  // The smallest quota from the cgroup up to the root (a parent's quota bounds its children); the
  // root alone where the process's path is not under `root` (a container's own mount).
  const auto smallest = [](const std::string& base, const std::string& path, const auto& read) {
    int best = 0;
    std::string dir = base + (path == "/" ? "" : path);
    for (;;) {
      const int q = read(dir);
      if (q > 0) best = best > 0 ? std::min(best, q) : q;
      if (dir.size() <= base.size()) break;
      dir.erase(std::max(dir.rfind('/'), base.size()));
    }
    return best;
  };
  int quota = 0;
  if (v1)
    quota = smallest(root + "/cpu", v1_path, [](const std::string& dir) {
      std::string q, p;
      return ReadWords(dir + "/cpu.cfs_quota_us", &q, nullptr) &&
                     ReadWords(dir + "/cpu.cfs_period_us", &p, nullptr)
                 ? CeilCpus(ToInt(q), ToInt(p))
                 : 0;
    });
  if (v2 && quota == 0)
    quota = smallest(root, v2_path, [](const std::string& dir) {
      std::string a, b;
      return ReadWords(dir + "/cpu.max", &a, &b) && a != "max" ? CeilCpus(ToInt(a), ToInt(b)) : 0;
    });
  return quota;
}

void ChooseCpuThreads() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  const bool mpi = LaunchedByMpi();
  if (mpi && !initialized) return;
  std::vector<uint8_t> mine, node;
  const bool known = AffinityBytes(&mine);
  int ranks = 1;
  if (mpi) {  // every rank takes part, whatever its own environment, so that none waits alone
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &ranks);
    node.assign(mine.size(), 0);
    MPI_Allreduce(mine.data(), node.data(), int(mine.size()), MPI_BYTE, MPI_BOR, local);
    MPI_Comm_free(&local);
  }
  if (UserSetThreads()) {
    g_source = "OMP_NUM_THREADS";
    return;
  }
  if (!known) {
    g_source = "OpenMP's default; OMP_NUM_THREADS sets it";
    return;
  }
  const int quota = CgroupCpuQuota();
  const auto capped = [&](int cpus) { return quota > 0 ? std::min(cpus, quota) : cpus; };
  const int own = Count(mine), rank_cpus = capped(own);
  if (ranks > 1) {
    const int all = Count(node), node_cpus = capped(all);
    omp_set_num_threads(SharedThreadsPerRank(rank_cpus, node_cpus, ranks));
    g_source = std::to_string(node_cpus) + " CPUs on this node shared by its " +
               std::to_string(ranks) + " ranks" +
               (node_cpus < all ? ", capped by the cgroup's CPU quota" : "") +
               "; OMP_NUM_THREADS sets it";
    return;
  }
  omp_set_num_threads(std::max(1, rank_cpus));
  g_source = rank_cpus < own ? "the CPU quota of this cgroup; OMP_NUM_THREADS sets it"
                             : "the CPUs this process may run on; OMP_NUM_THREADS sets it";
}

std::string DescribeThreads() {
  return std::to_string(omp_get_max_threads()) + " (" +
         (g_source.empty() ? std::string("OpenMP's default; OMP_NUM_THREADS sets it") : g_source) +
         ")";
}

}  // namespace xt
