// The CUDA emulator's NCCL (the calls the engine makes), on host memory. One rank: every
// collective is a copy (sums over one rank), and a group's sends to itself meet its receives in
// order at ncclGroupEnd. Several ranks (processes under mpirun, each its own emulated device):
// the collectives are MPI's on a communicator of the members, which find each other through a
// directory named by the unique id (the emulator's ranks share one machine); sends and receives
// of a group are posted together at ncclGroupEnd. Floats only, counts below 2^31.
#define OMPI_SKIP_MPICXX 1  // the C API only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "xtuner/cuda/emu/state.h"

struct ncclComm {
  int rank = 0, size = 1;
  MPI_Comm mpi = MPI_COMM_NULL;  // several ranks
};

namespace {

struct Pending {
  const void* send = nullptr;  // a send's buffer, or
  void* recv = nullptr;        // a receive's
  size_t bytes = 0;
  ncclComm_t comm = nullptr;
  int peer = 0;
};

int g_group_depth = 0;
std::deque<Pending> g_sends, g_recvs;

size_t Bytes(size_t count, ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
      return count;
    case ncclFloat16:
    case ncclBfloat16:
      return 2 * count;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4 * count;
    default:
      return 8 * count;
  }
}

ncclResult_t Copy(void* dst, const void* src, size_t bytes) {
  if (bytes && (!xt::emu::IsDevice(dst, bytes) || !xt::emu::IsDevice(src, bytes)))
    return ncclInvalidArgument;
  if (bytes && dst != src) std::memmove(dst, src, bytes);
  return ncclSuccess;
}

// Several ranks: every queued send and receive posted, then waited for.
ncclResult_t PostAll() {
  std::vector<MPI_Request> reqs;
  ncclResult_t st = ncclSuccess;
  for (const Pending& r : g_recvs)
    if (r.bytes > size_t(INT32_MAX) || !xt::emu::IsDevice(r.recv, r.bytes))
      st = ncclInvalidArgument;
  for (const Pending& p : g_sends)
    if (p.bytes > size_t(INT32_MAX) || !xt::emu::IsDevice(p.send, p.bytes))
      st = ncclInvalidArgument;
  if (st == ncclSuccess) {
    for (const Pending& r : g_recvs) {
      reqs.emplace_back();
      MPI_Irecv(r.recv, int(r.bytes), MPI_BYTE, r.peer, 0, r.comm->mpi, &reqs.back());
    }
    for (const Pending& p : g_sends) {
      reqs.emplace_back();
      MPI_Isend(p.send, int(p.bytes), MPI_BYTE, p.peer, 0, p.comm->mpi, &reqs.back());
    }
    if (MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE) != MPI_SUCCESS)
      st = ncclSystemError;
  }
  g_sends.clear();
  g_recvs.clear();
  return st;
}

ncclResult_t Match() {
  bool remote = false;
  for (const std::deque<Pending>* q : {&g_sends, &g_recvs})
    for (const Pending& p : *q) remote |= p.comm->size > 1;
  if (remote) return PostAll();
  ncclResult_t st = ncclSuccess;
  while (!g_sends.empty() && !g_recvs.empty()) {
    const Pending s = g_sends.front(), r = g_recvs.front();
    g_sends.pop_front();
    g_recvs.pop_front();
    if (s.bytes != r.bytes) st = ncclInvalidUsage;
    if (st == ncclSuccess) st = Copy(r.recv, s.send, s.bytes);
  }
  if (!g_sends.empty() || !g_recvs.empty()) st = ncclInvalidUsage;  // would hang on a device
  g_sends.clear();
  g_recvs.clear();
  return st;
}

bool Ok(ncclComm_t comm, cudaStream_t stream) { return comm && xt::emu::StreamValid(stream); }

// Several ranks: fp32 sums of fewer than 2^31 elements (what the engine asks for).
bool Supported(ncclDataType_t t, ncclRedOp_t op, size_t count) {
  return t == ncclFloat32 && op == ncclSum && count <= size_t(INT32_MAX);
}
// Whether send and recv hold send_count and recv_count floats of device memory.
bool Device(const void* send, const void* recv, size_t send_count, size_t recv_count) {
  return (send_count == 0 || xt::emu::IsDevice(send, send_count * sizeof(float))) &&
         (recv_count == 0 || xt::emu::IsDevice(recv, recv_count * sizeof(float)));
}
ncclResult_t Mpi(int err) { return err == MPI_SUCCESS ? ncclSuccess : ncclSystemError; }

}  // namespace

extern "C" {

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclInvalidArgument:
      return "invalid argument (CUDA emulator)";
    case ncclInvalidUsage:
      return "invalid usage (CUDA emulator)";
    default:
      return "error (CUDA emulator)";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return ncclInvalidArgument;
  std::memset(id, 0, sizeof *id);
  std::random_device rd;
  std::snprintf(id->internal, sizeof id->internal, "xtuner-emu-nccl-%d-%08x%08x", int(getpid()),
                rd(), rd());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (!comm || nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  if (nranks == 1) {
    *comm = new ncclComm;
    return ncclSuccess;
  }
  int mpi_up = 0;
  MPI_Initialized(&mpi_up);
  if (!mpi_up) {
    std::fprintf(stderr, "xtuner CUDA emulator: NCCL with %d ranks needs MPI\n", nranks);
    return ncclInvalidUsage;
  }
  // The members meet in a directory named by the id: each writes its world rank under its rank.
  namespace fs = std::filesystem;
  id.internal[sizeof id.internal - 1] = 0;
  const fs::path dir = fs::temp_directory_path() / id.internal;
  std::error_code ec;
  fs::create_directories(dir, ec);
  int world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world);
  {
    const fs::path tmp = dir / (std::to_string(rank) + ".tmp");
    std::ofstream(tmp) << world << "\n";
    fs::rename(tmp, dir / std::to_string(rank), ec);
  }
  std::vector<int> members(size_t(nranks), -1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (int r = 0; r < nranks;) {
    std::ifstream in(dir / std::to_string(r));
    if (in >> members[size_t(r)]) {
      ++r;
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "xtuner CUDA emulator: NCCL rank %d of %d: rank %d never came\n", rank,
                   nranks, r);
      return ncclSystemError;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  MPI_Group world_group, group;
  MPI_Comm_group(MPI_COMM_WORLD, &world_group);
  MPI_Group_incl(world_group, nranks, members.data(), &group);
  MPI_Comm mpi = MPI_COMM_NULL;
  const int tag = int(std::hash<std::string>()(id.internal) % 30000);
  const int made = MPI_Comm_create_group(MPI_COMM_WORLD, group, tag, &mpi);
  MPI_Group_free(&group);
  MPI_Group_free(&world_group);
  if (made != MPI_SUCCESS) return ncclSystemError;
  MPI_Barrier(mpi);  // everyone has read the directory
  if (rank == 0) fs::remove_all(dir, ec);
  *comm = new ncclComm{rank, nranks, mpi};
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm && comm->mpi != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

ncclResult_t ncclGroupStart() {
  ++g_group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (g_group_depth == 0) return ncclInvalidUsage;
  return --g_group_depth == 0 ? Match() : ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream)) return ncclInvalidArgument;
  if (comm->size == 1) return Copy(recv, send, Bytes(count, t));
  if (!Supported(t, op, count) || !Device(send, recv, count, count)) return ncclInvalidArgument;
  return Mpi(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, int(count), MPI_FLOAT, MPI_SUM,
                           comm->mpi));
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream) || root < 0 || root >= comm->size) return ncclInvalidArgument;
  if (comm->size == 1) return Copy(recv, send, Bytes(count, t));
  if (!Supported(t, ncclSum, count) ||
      !Device(comm->rank == root ? send : recv, recv, count, count))
    return ncclInvalidArgument;
  if (comm->rank == root && send != recv) std::memmove(recv, send, count * sizeof(float));
  return Mpi(MPI_Bcast(recv, int(count), MPI_FLOAT, root, comm->mpi));
}
ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t t,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream) || root < 0 || root >= comm->size) return ncclInvalidArgument;
  if (comm->size == 1) return Copy(recv, send, Bytes(count, t));
  const bool me = comm->rank == root;
  if (!Supported(t, op, count) || !Device(send, me ? recv : send, count, count))
    return ncclInvalidArgument;
  return Mpi(MPI_Reduce(me && send == recv ? MPI_IN_PLACE : send, recv, int(count), MPI_FLOAT,
                        MPI_SUM, root, comm->mpi));
}
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t t,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream)) return ncclInvalidArgument;
  if (comm->size == 1) return Copy(recv, send, Bytes(count, t));
  if (!Supported(t, op, count * size_t(comm->size)) ||
      !Device(send, recv, count * size_t(comm->size), count))
    return ncclInvalidArgument;
  return Mpi(MPI_Reduce_scatter_block(send, recv, int(count), MPI_FLOAT, MPI_SUM, comm->mpi));
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t t,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream)) return ncclInvalidArgument;
  if (comm->size == 1) return Copy(recv, send, Bytes(count, t));
  if (!Supported(t, ncclSum, count * size_t(comm->size)) ||
      !Device(send, recv, count, count * size_t(comm->size)))
    return ncclInvalidArgument;
  const bool in_place = send == static_cast<const float*>(recv) + count * size_t(comm->rank);
  return Mpi(MPI_Allgather(in_place ? MPI_IN_PLACE : send, int(count), MPI_FLOAT, recv, int(count),
                           MPI_FLOAT, comm->mpi));
}
ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (!Ok(comm, stream) || peer < 0 || peer >= comm->size) return ncclInvalidArgument;
  if (g_group_depth == 0) return ncclInvalidUsage;  // the engine groups every send
  g_sends.push_back({send, nullptr, Bytes(count, t), comm, peer});
  return ncclSuccess;
}
ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (!Ok(comm, stream) || peer < 0 || peer >= comm->size) return ncclInvalidArgument;
  if (g_group_depth == 0) return ncclInvalidUsage;
  g_recvs.push_back({nullptr, recv, Bytes(count, t), comm, peer});
  return ncclSuccess;
}

}  // extern "C"
