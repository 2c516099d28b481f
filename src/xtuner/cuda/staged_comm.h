// StagedComm: the Comm interface (dist/comm.h) for GPU tensors without NCCL: each float
// collective copies its device buffers to host memory, runs the host group's collective (MPI)
// and copies the result back, in stream order with the work queued before it (the call waits for
// `stream`, so it returns with the result in place, unlike NcclComm's queued collectives). The
// control collectives (doubles, counts, Broadcast, Barrier) take host memory and go straight to
// the host group, as in NcclComm.
//
// What it is for: parallel.gpu_comm = "mpi". Ranks may share a GPU (NCCL refuses two ranks on one
// device), so a multi-rank GPU mesh runs, slowly, on a machine with one GPU: the tests' way to
// exercise ZeRO-3 and expert parallelism on GPUs there. Also a fallback where NCCL cannot run.
// Copies cost two PCIe transfers per collective and a device sync: not for speed. Counts are
// MPI's: each must fit in an int (MpiComm's limit), where NCCL takes any size.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "xtuner/dist/comm.h"

namespace xt::cuda {

// Over `host` (outlives the result unless passed as owned_host), waiting for `stream` (a
// cudaStream_t; null: the default stream) before each float collective. A CUDA failure ends the
// job through the host group's Abort, naming the collective.
std::unique_ptr<Comm> MakeStagedComm(Comm* host, void* stream,
                                     std::unique_ptr<Comm> owned_host = nullptr);

}  // namespace xt::cuda
