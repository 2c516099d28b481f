// The CUDA training backend (train.device = "cuda", train/backend.h): one GPU per process.
// Parameters, gradients and AdamW's moments live on the GPU for the whole run; the model is
// CudaModel (fp32, or bf16 matmuls for train.precision = "bf16"), the update the CUDA AdamW
// kernel (bit-identical to the CPU's), the gradient norm a device reduction. The host copy is
// written back by SyncToHost only (checkpoints, exports, the end of the run).
//
// The GPU keeps the same ZeRO-3 shard as the host (dist/sharded_params.h, over device memory):
// one rank holds the whole model; under mpirun each rank holds 1/world of every non-expert unit
// and 1/dp of its ep slice's experts, with their gradients and moments, and the model gathers
// each unit over NCCL before its use and reduce-scatters its gradients after its backward, as
// the CPU does over MPI. With parallel.ep > 1 the MoE layers' rows travel to the ranks that hold
// their experts over NCCL's all-to-all (cuda/expert_parallel_cuda.h). Each process takes the GPU
// of its local rank; the ranks check that their GPUs are distinct before anything large is
// allocated. Upload and SyncToHost are copies of the shard: checkpoints keep their format and
// reshard or resume on any mesh, CPU or GPU.
// Unverified on a GPU so far (none lent): tests/cuda/train_cuda_test.cc compares whole runs with
// the CPU backend on one GPU, tests/dist/train_mpi_test.cc on several.
#pragma once

#include "xtuner/train/backend.h"

namespace xt::cuda {

// Registers "cuda" with RegisterTrainBackend. Making the backend fails with a clear error when
// no GPU is usable, or when two ranks share a GPU.
void RegisterCudaTrainBackend();

}  // namespace xt::cuda
