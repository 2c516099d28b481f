// The CUDA training backend (train.device = "cuda", train/backend.h): one GPU per process.
// Parameters, gradients and AdamW's moments live on the GPU for the whole run; the model is
// CudaModel (fp32, or bf16 matmuls for train.precision = "bf16"), the update the CUDA AdamW
// kernel (bit-identical to the CPU's), the gradient norm a device reduction. The host copy is
// written back by SyncToHost only (checkpoints, exports, the end of the run).
// Several ranks (mpirun, parallel.ep = 1): data parallel. Each process takes the GPU of its local
// rank; every GPU holds the whole model and AdamW state, assembled at start-up from the ranks'
// host shards with an NCCL sum; FinishGradients all-reduces the gradients over NCCL; every rank
// applies the same update; SyncToHost copies back the ranges of the rank's own host shard.
// (ZeRO-3 sharding on the GPUs would divide the state's memory by the ranks: not built yet.)
// Unverified on a GPU so far (none lent): tests/cuda/train_cuda_test.cc compares whole runs with
// the CPU backend.
#pragma once

#include "xtuner/train/backend.h"

namespace xt::cuda {

// Registers "cuda" with RegisterTrainBackend. Making the backend fails with a clear error when
// no GPU is usable, or when the host shard is not the whole model (more than one rank).
void RegisterCudaTrainBackend();

}  // namespace xt::cuda
