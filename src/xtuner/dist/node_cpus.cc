// ShareNodeCpus: the node's ranks found with MPI_Comm_split_type (the ranks sharing memory), the
// CPUs they may run on by OR-ing their affinity masks.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include "xtuner/dist/node_cpus.h"

#include <mpi.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "xtuner/dist/comm.h"

namespace xt {

int SharedThreadsPerRank(int rank_cpus, int node_cpus, int ranks_on_node) {
  return std::max(1, std::min(rank_cpus, node_cpus / std::max(1, ranks_on_node)));
}

void ShareNodeCpus() {
  if (!LaunchedByMpi()) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return;
  // Every rank takes part, whatever its own environment says, so that none waits alone.
  // This rank's CPUs, one byte each (1: may run there); none where the mask cannot be read.
  cpu_set_t set;
  CPU_ZERO(&set);
  const bool known = sched_getaffinity(0, sizeof set, &set) == 0;
  std::vector<uint8_t> mine(CPU_SETSIZE), node(CPU_SETSIZE);
  for (int c = 0; c < CPU_SETSIZE; ++c) mine[c] = known && CPU_ISSET(c, &set) ? 1 : 0;
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  int ranks = 1;
  MPI_Comm_size(local, &ranks);
  MPI_Allreduce(mine.data(), node.data(), CPU_SETSIZE, MPI_BYTE, MPI_BOR, local);
  MPI_Comm_free(&local);
  if (std::getenv("OMP_NUM_THREADS") || !known || ranks == 1) return;
  const int rank_cpus = int(std::count(mine.begin(), mine.end(), 1));
  const int node_cpus = int(std::count(node.begin(), node.end(), 1));
  omp_set_num_threads(SharedThreadsPerRank(rank_cpus, node_cpus, ranks));
}

std::string DescribeThreads(int world_size) {
  const std::string n = std::to_string(omp_get_max_threads());
  if (std::getenv("OMP_NUM_THREADS")) return n + " a rank (OMP_NUM_THREADS)";
  if (world_size > 1)
    return n + " a rank (the node's CPUs shared by its ranks; OMP_NUM_THREADS sets it)";
  return n + " (OpenMP's default: the CPUs this process may run on)";
}

}  // namespace xt
