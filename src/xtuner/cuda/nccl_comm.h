// NcclComm: the Comm interface (dist/comm.h) over NCCL, for GPU tensors. Bootstrapped through
// a host Comm (MPI under mpirun/srun, or one rank): rank 0 makes NCCL's unique id and broadcasts
// it over the host group, so the NCCL ranks are the host group's ranks in the same order.
//
// Buffers: the float collectives (AllReduceSum(float*), AllGather, Gather, ReduceScatterSum,
// AllToAll) take DEVICE memory and are queued on the communicator's stream: they are complete
// in stream order (not when the call returns), so kernels on the same stream may use the result.
// The control collectives (AllReduceSum/Max on doubles, AllToAllCounts, Broadcast, Barrier) take
// HOST memory and go through the host group, blocking, as in MpiComm: the trainer's statistics,
// token counts and error messages stay on the host.
//
// One GPU per rank (NCCL does not run two ranks on one device): call SelectLocalDevice() before
// Create. A failing NCCL call ends the job through Abort, naming the call and NCCL's message.
// Unverified on a GPU so far (none lent): see tests/cuda/nccl_comm_test.cc.
#pragma once

#include <memory>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/dist/comm.h"

namespace xt::cuda {

// Makes this process use the GPU of its local rank (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// LOCAL_RANK, MPI_LOCALRANKID, PMI_LOCAL_RANK or MV2_COMM_WORLD_LOCAL_RANK; 0 when none is set)
// modulo the visible devices. Returns the device index. Two ranks on one GPU are not detected
// here: see CheckDistinctDevices.
Result<int> SelectLocalDevice();

// A collective over `host`: OK when every rank uses a different GPU (host name and device UUID),
// else an error naming two ranks that share one (more ranks than GPUs on a node, or a launcher
// whose local rank SelectLocalDevice does not know). NCCL cannot run two ranks on one GPU and
// may hang instead of failing.
Status CheckDistinctDevices(Comm& host);
// How many ranks of `host`, this one included, use this process's GPU (the same host name and
// device UUID): ranks sharing a GPU (parallel.gpu_comm = "mpi") share its memory. A collective.
Result<int> RanksSharingThisDevice(Comm& host);

class NcclComm : public Comm {
 public:
  // Collective over `host` (every rank of it calls this): a NCCL communicator over the same
  // ranks on the current device, its collectives queued on `stream` (a cudaStream_t; null: the
  // default stream). `host` must outlive the result unless it is passed as `owned_host`.
  static Result<std::unique_ptr<NcclComm>> Create(Comm* host, void* stream = nullptr,
                                                  std::unique_ptr<Comm> owned_host = nullptr);
  ~NcclComm() override;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  void* stream() const { return stream_; }

  void AllReduceSum(double* data, int64_t n) override;  // host
  void AllReduceSum(float* data, int64_t n) override;   // device
  void AllReduceMax(double* data, int64_t n) override;  // host
  void AllGather(float* recv, const float* send, const std::vector<int64_t>& counts) override;
  void Gather(float* recv, const float* send, const std::vector<int64_t>& counts,
              int root) override;
  void ReduceScatterSum(float* recv, const float* send,
                        const std::vector<int64_t>& counts) override;
  void AllToAll(float* recv, const std::vector<int64_t>& recv_counts, const float* send,
                const std::vector<int64_t>& send_counts) override;
  void AllToAllCounts(int64_t* recv, const int64_t* send, int64_t n) override;  // host
  void Broadcast(void* data, int64_t bytes, int root) override;                 // host
  void Barrier() override;                                                      // host
  // The sub-group over the host group's Split, with its own NCCL communicator.
  std::unique_ptr<Comm> Split(int color, int key) override;
  [[noreturn]] void Abort(const std::string& message) override;

 private:
  NcclComm() = default;
  // Ends the job when `result` (an ncclResult_t) is not success.
  void Check(int result, const char* what);

  Comm* host_ = nullptr;
  std::unique_ptr<Comm> owned_host_;
  void* comm_ = nullptr;  // ncclComm_t
  void* stream_ = nullptr;
};

}  // namespace xt::cuda
