// The CUDA emulator's NCCL (the calls the engine makes), for communicators of one rank: every
// collective is a copy (sums over one rank), and a group's sends to itself meet its receives in
// order at ncclGroupEnd. Several ranks are refused (ncclInvalidUsage) with a message: under the
// emulator, several ranks run the GPU code with parallel.gpu_comm = "mpi".
#include <nccl.h>

#include <cstdio>
#include <cstring>
#include <deque>

#include "xtuner/cuda/emu/state.h"

struct ncclComm {
  int rank = 0;
};

namespace {

struct Pending {
  const void* send = nullptr;  // a send's buffer, or
  void* recv = nullptr;        // a receive's
  size_t bytes = 0;
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

ncclResult_t Match() {
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
  std::strncpy(id->internal, "xtuner CUDA emulator", sizeof id->internal - 1);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId, int rank) {
  if (!comm) return ncclInvalidArgument;
  if (nranks != 1 || rank != 0) {
    std::fprintf(stderr,
                 "xtuner CUDA emulator: NCCL communicators have one rank here (asked for %d): "
                 "run several ranks with parallel.gpu_comm = \"mpi\"\n",
                 nranks);
    return ncclInvalidUsage;
  }
  *comm = new ncclComm;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
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
                           ncclRedOp_t, ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream)) return ncclInvalidArgument;
  return Copy(recv, send, Bytes(count, t));
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t t, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream) || root != 0) return ncclInvalidArgument;
  return Copy(recv, send, Bytes(count, t));
}
ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t t, ncclRedOp_t,
                        int root, ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream) || root != 0) return ncclInvalidArgument;
  return Copy(recv, send, Bytes(count, t));
}
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t t,
                               ncclRedOp_t, ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream)) return ncclInvalidArgument;
  return Copy(recv, send, Bytes(count, t));
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t t,
                           ncclComm_t comm, cudaStream_t stream) {
  if (!Ok(comm, stream)) return ncclInvalidArgument;
  return Copy(recv, send, Bytes(count, t));
}
ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (!Ok(comm, stream) || peer != 0) return ncclInvalidArgument;
  if (g_group_depth == 0) return ncclInvalidUsage;  // a send to oneself outside a group hangs
  g_sends.push_back({send, nullptr, Bytes(count, t)});
  return ncclSuccess;
}
ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  if (!Ok(comm, stream) || peer != 0) return ncclInvalidArgument;
  if (g_group_depth == 0) return ncclInvalidUsage;
  g_recvs.push_back({nullptr, recv, Bytes(count, t)});
  return ncclSuccess;
}

}  // extern "C"
