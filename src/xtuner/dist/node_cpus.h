// How many OpenMP threads xtuner runs where the user has not said (OMP_NUM_THREADS unset). OpenMP's
// default is every CPU the process may run on, which oversubscribes the cores twice over:
//  - N ranks on one node (mpirun --oversubscribe or --bind-to none, srun without
//    --cpus-per-task) each ran one thread a CPU, several times slower than one thread a core;
//  - a container with a CPU quota (docker --cpus, a Kubernetes CPU limit) ran one thread for each
//    of the host's CPUs, throttled to the quota.
// torchrun answers the first by setting one thread a rank; xtuner shares the node's CPUs, capped by
// the quota, among its ranks instead.
#pragma once

#include <string>

namespace xt {

// The threads of a rank that may run on `rank_cpus` CPUs, on a node whose `ranks_on_node` ranks
// may run on `node_cpus` CPUs in all (the union of their affinity masks): an even share of the
// node's CPUs, at most the rank's own, at least one.
int SharedThreadsPerRank(int rank_cpus, int node_cpus, int ranks_on_node);

// The CPUs this process's cgroup may use, rounded up (a quota of 1.5 CPUs is 2): the smallest quota
// from its cgroup (named in `self`) up to `root`, in cgroup v1's cpu.cfs_quota_us over
// cpu.cfs_period_us (the cpu controller's hierarchy at `root`/cpu, where systemd and container
// runtimes link it), or else v2's cpu.max ("200000 100000": 2). 0 where there is no quota ("max",
// -1) or nothing can be read.
int CgroupCpuQuota(const std::string& root = "/sys/fs/cgroup",
                   const std::string& self = "/proc/self/cgroup");

// Sets OpenMP's thread count of the calling thread (xtuner's only thread that starts parallel work)
// where OMP_NUM_THREADS is unset or empty:
//  - under an MPI launcher, once MPI is initialized (after MakeWorldComm; a collective over
//    MPI_COMM_WORLD in which every rank takes part, whatever its own environment):
//    SharedThreadsPerRank over the ranks of this node, its CPUs capped by the quota;
//  - one process: the CPUs it may run on capped by the quota.
// Under a launcher before MPI is initialized it does nothing (call it again after). Calling it
// twice gives the same count.
void ChooseCpuThreads();

// The calling thread's OpenMP thread count and where it came from, for a run's summary:
// "2 (OMP_NUM_THREADS)", "1 (2 CPUs on this node shared by its 2 ranks; OMP_NUM_THREADS sets it)"
// (", capped by the cgroup's CPU quota" after "ranks" where the quota lowered them), "2 (the CPU
// quota of this cgroup; ...)", "8 (the CPUs this process may run on; ...)".
std::string DescribeThreads();

}  // namespace xt
