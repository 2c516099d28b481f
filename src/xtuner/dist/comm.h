// Comm: collective communication among the ranks of a group (MPI's model). Every rank of the
// group calls the same collectives in the same order with matching sizes; buffers are CPU
// memory. Two implementations: SingleComm (one rank: the collectives are copies) and MpiComm
// (Open MPI), so that nothing above this interface special-cases one rank. NCCL joins through
// the same interface in the GPU backend.
//
// Failures: a communication failure (a dead peer) ends the whole job through MPI's fatal error
// handler; an error found by the engine on one rank ends it through Abort, which names the rank.
// Counts are in elements and must each fit in an int (2^31 - 1; MPI's limit).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace xt {

class Comm {
 public:
  virtual ~Comm() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // data (n) = element-wise sum (max) over the group, in place.
  virtual void AllReduceSum(double* data, int64_t n) = 0;
  virtual void AllReduceSum(float* data, int64_t n) = 0;
  virtual void AllReduceMax(double* data, int64_t n) = 0;

  // recv (sum of counts) = every rank's send (counts[r] elements) concatenated in rank order.
  // send may be this rank's own block of recv (in place); otherwise they must not overlap.
  virtual void AllGather(float* recv, const float* send, const std::vector<int64_t>& counts) = 0;

  // At `root` only: recv (sum of counts) = every rank's send (counts[r]) in rank order.
  virtual void Gather(float* recv, const float* send, const std::vector<int64_t>& counts,
                      int root) = 0;

  // send (sum of counts) holds one block per rank in rank order, block r of counts[r]
  // elements; recv (counts[rank()]) = the sum over ranks of their block rank().
  virtual void ReduceScatterSum(float* recv, const float* send,
                                const std::vector<int64_t>& counts) = 0;

  // send holds send_counts[r] elements for rank r, blocks in rank order; recv receives
  // recv_counts[r] elements from rank r, blocks in rank order. recv_counts[r] must equal what
  // rank r sends here (exchange the counts first with AllToAllCounts). It moves bits, never
  // float values: bf16 pairs travel through it (cuda/expert_parallel_cuda.h), so every
  // implementation must copy bytes as they are (no arithmetic, no flushing of denormals, no
  // quieting of NaNs).
  virtual void AllToAll(float* recv, const std::vector<int64_t>& recv_counts, const float* send,
                        const std::vector<int64_t>& send_counts) = 0;
  // recv (size() * n) block r = rank r's block rank() of send (size() * n).
  virtual void AllToAllCounts(int64_t* recv, const int64_t* send, int64_t n) = 0;

  virtual void Broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void Barrier() = 0;

  // The sub-group of the ranks that pass the same color, ranked by key (then by rank). A
  // collective over this group.
  virtual std::unique_ptr<Comm> Split(int color, int key) = 0;

  // Ends the whole job now, every rank, after writing "rank R/N: MESSAGE" to stderr.
  [[noreturn]] virtual void Abort(const std::string& message) = 0;
};

// One rank.
std::unique_ptr<Comm> MakeSingleComm();

// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI/PMIx).
bool LaunchedByMpi();

// The world: MPI_COMM_WORLD (initializing MPI; it is finalized when the returned object is
// destroyed) when LaunchedByMpi(), else a SingleComm.
std::unique_ptr<Comm> MakeWorldComm();

}  // namespace xt
