// How many OpenMP threads a rank runs when several ranks share a node. OpenMP's default is every
// CPU a process may run on, so N ranks on one node without OMP_NUM_THREADS (mpirun
// --oversubscribe or --bind-to none, srun without --cpus-per-task) ran N times as many threads as
// cores, several times slower than one thread a core. torchrun answers this by setting one thread
// a rank; xtuner shares the node's CPUs among its ranks instead.
#pragma once

#include <string>

namespace xt {

// The threads of a rank that may run on `rank_cpus` CPUs, on a node whose `ranks_on_node` ranks
// may run on `node_cpus` CPUs in all (the union of their affinity masks): an even share of the
// node's CPUs, at most the rank's own, at least one.
int SharedThreadsPerRank(int rank_cpus, int node_cpus, int ranks_on_node);

// Under an MPI launcher (after MakeWorldComm; a collective over MPI_COMM_WORLD) with
// OMP_NUM_THREADS unset: sets OpenMP's thread count of the calling thread (xtuner's only thread
// that starts parallel work) to SharedThreadsPerRank of this node's ranks. Otherwise (one process,
// or a user's OMP_NUM_THREADS) nothing changes.
void ShareNodeCpus();

// The calling thread's OpenMP thread count and where it came from, for a run's summary:
// "2 a rank (OMP_NUM_THREADS)", "1 a rank (the node's CPUs shared by its ranks; OMP_NUM_THREADS
// sets it)" where there are several ranks (`world_size`), else "8 (OpenMP's default: ...)".
std::string DescribeThreads(int world_size);

}  // namespace xt
