// DeviceShardMemory: ShardedParams' floats (dist/shard_memory.h) on the current GPU, for ZeRO-3
// over NCCL (cuda/nccl_comm.h): stream-ordered (cudaMallocAsync / cudaFreeAsync from the
// device's memory pool, memsets and adds queued on `stream`, which must be the NcclComm's and
// the model's stream so that gathers, kernels and frees keep their order without a sync).
// An allocation that fails ends the process with a message naming what and how much; a failed
// memset or add ends it naming CUDA's error (ParamSource has no error channel: these are the
// device running out, mid-step).
#pragma once

#include <memory>

#include "xtuner/dist/shard_memory.h"

namespace xt::cuda {

// `stream` is a cudaStream_t (null: the default stream); it outlives the result.
std::unique_ptr<ShardMemory> MakeDeviceShardMemory(void* stream);

}  // namespace xt::cuda
