// NcclComm over NCCL 2.x. Uneven collectives (NCCL's own need equal counts) are built from
// grouped primitives: AllGather from one broadcast per rank, ReduceScatterSum from one reduce per
// rank (ncclReduceScatter itself when the counts are equal), Gather and AllToAll from
// send/receive pairs (a rank's block to itself included, which NCCL supports).
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/nccl_comm.h"
#include "xtuner/dist/host_memory.h"

namespace xt::cuda {
namespace {

ncclComm_t Nccl(void* c) { return static_cast<ncclComm_t>(c); }

// Element offsets of the blocks (size() + 1).
std::vector<int64_t> Offsets(const std::vector<int64_t>& counts) {
  std::vector<int64_t> off(counts.size() + 1, 0);
  for (size_t r = 0; r < counts.size(); ++r) off[r + 1] = off[r] + counts[r];
  return off;
}

}  // namespace

Result<int> SelectLocalDevice() {
  int local = 0;
  // Open MPI, Slurm, torchrun-style launchers, MPICH / Intel MPI (Hydra), MVAPICH.
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK",
                           "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"}) {
    if (const char* v = std::getenv(name)) {
      local = std::atoi(v);
      break;
    }
  }
  int devices = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDeviceCount(&devices), "cudaGetDeviceCount"));
  if (devices == 0) return Status::Error("no CUDA device for this rank");
  const int device = local % devices;
  XT_RETURN_IF_ERROR(Check(cudaSetDevice(device), "cudaSetDevice"));
  return device;
}

namespace {

// Every rank's GPU as a number (HostId of its host name and device UUID), or an error on every
// rank where any could not name its own (that rank still joins the collective with -1, so none
// waits for it).
Result<std::vector<double>> DeviceIds(Comm& host) {
  int device = 0;
  cudaDeviceProp prop{};
  Status st = Check(cudaGetDevice(&device), "cudaGetDevice");
  if (st.ok()) st = Check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  const std::vector<double> ids =
      AllRankIds(host, st.ok() ? HostId(prop.uuid.bytes, sizeof prop.uuid.bytes) : -1.0);
  if (!st.ok()) return st;
  if (*std::min_element(ids.begin(), ids.end()) < 0)
    return Status::Error("another rank could not name its GPU");
  return ids;
}

}  // namespace

Status CheckDistinctDevices(Comm& host) {
  XT_ASSIGN_OR_RETURN(const std::vector<double> ids, DeviceIds(host));
  for (size_t a = 0; a < ids.size(); ++a)
    for (size_t b = a + 1; b < ids.size(); ++b)
      if (ids[a] == ids[b])
        return Status::Error("ranks " + std::to_string(a) + " and " + std::to_string(b) +
                             " use the same GPU: more ranks than GPUs on a node, or a launcher "
                             "whose local rank is unknown (set LOCAL_RANK per process)");
  return Status::OK();
}

Result<int> RanksSharingThisDevice(Comm& host) {
  XT_ASSIGN_OR_RETURN(const std::vector<double> ids, DeviceIds(host));
  return int(std::count(ids.begin(), ids.end(), ids[size_t(host.rank())]));
}

Result<std::unique_ptr<NcclComm>> NcclComm::Create(Comm* host, void* stream,
                                                   std::unique_ptr<Comm> owned_host) {
  if (!host) return Status::Error("NcclComm: no host group");
  std::unique_ptr<NcclComm> c(new NcclComm());
  c->owned_host_ = std::move(owned_host);
  c->host_ = host;
  c->stream_ = stream;
  ncclUniqueId id{};
  ncclResult_t st = ncclSuccess;
  if (host->rank() == 0) st = ncclGetUniqueId(&id);
  // Every rank learns whether rank 0 got an id (a failure there must not leave the others
  // waiting in ncclCommInitRank).
  double failed = st == ncclSuccess ? 0.0 : 1.0;
  host->AllReduceMax(&failed, 1);
  if (failed > 0)
    return Status::Error(std::string("NCCL: ncclGetUniqueId failed on rank 0") +
                         (st != ncclSuccess ? std::string(": ") + ncclGetErrorString(st) : ""));
  host->Broadcast(&id, int64_t(sizeof id), 0);
  ncclComm_t comm = nullptr;
  st = ncclCommInitRank(&comm, host->size(), id, host->rank());
  if (st != ncclSuccess)
    return Status::Error(std::string("NCCL: ncclCommInitRank (rank ") +
                         std::to_string(host->rank()) + " of " + std::to_string(host->size()) +
                         "): " + ncclGetErrorString(st));
  c->comm_ = comm;
  return std::move(c);  // (nvcc in C++17 does not move a local into Result implicitly)
}

NcclComm::~NcclComm() {
  if (comm_) ncclCommDestroy(Nccl(comm_));
}

void NcclComm::Check(int result, const char* what) {
  if (result == ncclSuccess) return;
  Abort(std::string("NCCL: ") + what + ": " + ncclGetErrorString(ncclResult_t(result)));
}

void NcclComm::AllReduceSum(double* data, int64_t n) { host_->AllReduceSum(data, n); }
void NcclComm::AllReduceMax(double* data, int64_t n) { host_->AllReduceMax(data, n); }

void NcclComm::AllReduceSum(float* data, int64_t n) {
  if (n <= 0) return;
  Check(
      ncclAllReduce(data, data, size_t(n), ncclFloat, ncclSum, Nccl(comm_), cudaStream_t(stream_)),
      "all-reduce");
}

void NcclComm::AllGather(float* recv, const float* send, const std::vector<int64_t>& counts) {
  const std::vector<int64_t> off = Offsets(counts);
  Check(ncclGroupStart(), "all-gather");
  for (int r = 0; r < size(); ++r) {
    if (counts[r] == 0) continue;
    Check(ncclBroadcast(send, recv + off[r], size_t(counts[r]), ncclFloat, r, Nccl(comm_),
                        cudaStream_t(stream_)),
          "all-gather");
  }
  Check(ncclGroupEnd(), "all-gather");
}

void NcclComm::Gather(float* recv, const float* send, const std::vector<int64_t>& counts,
                      int root) {
  const std::vector<int64_t> off = Offsets(counts);
  const int me = rank();
  Check(ncclGroupStart(), "gather");
  if (me == root) {
    for (int r = 0; r < size(); ++r)
      if (counts[r] > 0)
        Check(ncclRecv(recv + off[r], size_t(counts[r]), ncclFloat, r, Nccl(comm_),
                       cudaStream_t(stream_)),
              "gather");
  }
  if (counts[me] > 0)
    Check(ncclSend(send, size_t(counts[me]), ncclFloat, root, Nccl(comm_), cudaStream_t(stream_)),
          "gather");
  Check(ncclGroupEnd(), "gather");
}

void NcclComm::ReduceScatterSum(float* recv, const float* send,
                                const std::vector<int64_t>& counts) {
  bool equal = true;
  for (int64_t c : counts) equal = equal && c == counts[0];
  if (equal) {
    if (counts.empty() || counts[0] == 0) return;
    Check(ncclReduceScatter(send, recv, size_t(counts[0]), ncclFloat, ncclSum, Nccl(comm_),
                            cudaStream_t(stream_)),
          "reduce-scatter");
    return;
  }
  const std::vector<int64_t> off = Offsets(counts);
  Check(ncclGroupStart(), "reduce-scatter");
  for (int r = 0; r < size(); ++r) {
    if (counts[r] == 0) continue;
    // recvbuff is read on the root only.
    Check(ncclReduce(send + off[r], recv, size_t(counts[r]), ncclFloat, ncclSum, r, Nccl(comm_),
                     cudaStream_t(stream_)),
          "reduce-scatter");
  }
  Check(ncclGroupEnd(), "reduce-scatter");
}

void NcclComm::AllToAll(float* recv, const std::vector<int64_t>& recv_counts, const float* send,
                        const std::vector<int64_t>& send_counts) {
  const std::vector<int64_t> soff = Offsets(send_counts), roff = Offsets(recv_counts);
  Check(ncclGroupStart(), "all-to-all");
  for (int r = 0; r < size(); ++r) {
    if (send_counts[r] > 0)
      Check(ncclSend(send + soff[r], size_t(send_counts[r]), ncclFloat, r, Nccl(comm_),
                     cudaStream_t(stream_)),
            "all-to-all");
    if (recv_counts[r] > 0)
      Check(ncclRecv(recv + roff[r], size_t(recv_counts[r]), ncclFloat, r, Nccl(comm_),
                     cudaStream_t(stream_)),
            "all-to-all");
  }
  Check(ncclGroupEnd(), "all-to-all");
}

void NcclComm::AllToAllCounts(int64_t* recv, const int64_t* send, int64_t n) {
  host_->AllToAllCounts(recv, send, n);
}

void NcclComm::Broadcast(void* data, int64_t bytes, int root) {
  host_->Broadcast(data, bytes, root);
}

void NcclComm::Barrier() {
  // Everything queued before the barrier is done on this rank, then the ranks meet.
  const cudaError_t st = cudaStreamSynchronize(cudaStream_t(stream_));
  if (st != cudaSuccess) Abort(std::string("CUDA: barrier: ") + cudaGetErrorString(st));
  host_->Barrier();
}

std::unique_ptr<Comm> NcclComm::Split(int color, int key) {
  std::unique_ptr<Comm> sub = host_->Split(color, key);
  Comm* sub_host = sub.get();
  Result<std::unique_ptr<NcclComm>> c = Create(sub_host, stream_, std::move(sub));
  if (!c.ok()) Abort("NCCL: split: " + c.status().message());
  return std::move(*c);
}

void NcclComm::Abort(const std::string& message) {
  if (comm_) ncclCommAbort(Nccl(comm_));
  comm_ = nullptr;
  host_->Abort(message);
  std::abort();  // not reached (nvcc's host pass does not see Comm::Abort's [[noreturn]])
}

}  // namespace xt::cuda
