// Where a training step runs (train.device): the model's forward and backward, the gradient
// norm and the AdamW update of this rank's shard.
//
// The trainer always keeps the host copy of the run's state: the ZeRO-3 shard of parameters
// (ShardedParams) and AdamW with its moments. Checkpoints, exports and the evaluation read that
// copy. The CPU backend computes on it in place. A device backend (cuda/train_backend_cuda.h)
// uploads it once, keeps parameters, gradients and moments on the device, and writes them back
// only when SyncToHost is called (before every checkpoint, export and the end of the run).
// Per step the trainer calls: ZeroGrads, RouterStats (when pooling the balancing statistics of
// several micro-batches), ForwardBackward per micro-batch, GradSumOfSquares, and Step unless
// the step is skipped. A backend's gradients are complete after the last backward (each unit's
// reduce-scattered into the shard as it finishes, on the CPU and the GPU alike).
//
// Device backends live in libraries the engine does not link (the CUDA backend needs the CUDA
// toolkit): the program that has one registers its factory (RegisterTrainBackend) before
// RunTraining; `xtuner` does so when built with CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/model/transformer.h"
#include "xtuner/optim/adamw.h"
#include "xtuner/train/router_bias.h"

namespace xt {

class Comm;
class ShardedParams;
struct Mesh;

class TrainBackend {
 public:
  virtual ~TrainBackend() = default;
  // For the start-up summary, e.g. "cpu" or "cuda:0 (NVIDIA H200, 139.8 GiB)".
  virtual std::string Describe() const = 0;
  virtual Status ZeroGrads() = 0;
  // Transformer::RouterStats and Transformer::ForwardBackward of one micro-batch (gradients
  // accumulate on the backend).
  virtual Result<BalanceStats> RouterStats(const Batch& batch) = 0;
  virtual Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight, double aux_weight,
                                           const BalancePool& pool) = 0;
  // This rank's share of the global gradient norm's square: summed over the ranks by the
  // trainer, the shares give the whole (e.g. the sum over this rank's shard).
  virtual Result<double> GradSumOfSquares() = 0;
  // One AdamW step of this rank's shard: lr, and the clipping coefficient the gradients are read
  // times (AdamW::Step's contract). Advances the optimizer's step count.
  virtual Status Step(double lr, float grad_scale) = 0;
  // Adds to elements of this rank's shard of parameters, outside the optimizer (DeepSeek-V3's
  // router bias update, RouterBiasShardAdds), after Step; `at` in shard coordinates.
  virtual Status AddToShard(const std::vector<ShardAdd>& adds) = 0;
  // Makes the host copy (the shard's parameters, AdamW's moments and step count) equal to the
  // backend's. A no-op for the CPU.
  virtual Status SyncToHost() = 0;
  virtual int64_t recompute_layers() const = 0;
  // The memory figure of the metrics (peak_memory): the device memory's high-water mark, or -1 for
  // the host's peak resident memory (the CPU).
  virtual int64_t PeakMemoryBytes() const { return -1; }
  // Floats of this rank's parameters the device holds in bf16 only, their fp32 not held (a LoRA
  // run's frozen matmul weights on GPUs, plan/frozen_bf16.h); 0 where every one is held in fp32.
  virtual int64_t Bf16OnlyFloats() const { return 0; }
};

// The host state a device backend starts from (and syncs back to), and how to run the model.
// Every pointer outlives the backend.
struct TrainBackendArgs {
  const ModelConfig* model = nullptr;
  ShardedParams* store = nullptr;  // this rank's shard (the whole model on one rank)
  AdamW* adamw = nullptr;          // over the same shard, its moments and step count
  // AdamW's ranges in shard coordinates (ShardDecayRanges of DefaultDecayRanges).
  std::vector<DecayRange> decay;
  Comm* world = nullptr;       // every rank (one: a single process), host collectives
  const Mesh* mesh = nullptr;  // the run's mesh over `world` (the store's)
  // How a device backend's ranks exchange device buffers (parallel.gpu_comm): "nccl", or "mpi"
  // (copies through host memory for `world`'s collectives; ranks may share a device).
  std::string gpu_comm = "nccl";
  double recompute = 0;  // model.recompute
  // The largest micro-batch: train.micro_batch_size rows of data.max_length tokens (0: unknown;
  // a device backend then skips its check that the step fits).
  int64_t micro_batch_size = 0, max_length = 0;
  bool bf16 = false;  // train.precision == "bf16"
  // train.cuda_attention and train.cuda_experts_gemm (validated; "auto": the backend's default).
  std::string cuda_attention = "auto";
  std::string cuda_experts_gemm = "auto";
  // train.cuda_frozen_weights (validated): "fp32" keeps a LoRA run's frozen weights in fp32
  // where "auto" lets a bf16 run on one GPU hold its matmuls' in bf16 only.
  std::string cuda_frozen_weights = "auto";
};

using TrainBackendFactory = Result<std::unique_ptr<TrainBackend>> (*)(const TrainBackendArgs&);
// Whether the backend can run here at all (e.g. a GPU is visible), cheaply, before any work.
using TrainBackendProbe = Status (*)();

// Makes `device` (a train.device value other than "cpu") available to RunTraining; `probe` may
// be null. Registering the same device again replaces it; a null factory removes it.
void RegisterTrainBackend(const std::string& device, TrainBackendFactory factory,
                          TrainBackendProbe probe = nullptr);

// OK when `device` is "cpu", or registered and its probe passes; otherwise the error
// MakeTrainBackend would give. RunTraining calls it before reading any data.
Status CheckTrainBackend(const std::string& device);

// The registered backend for `device`, made from `args`; an error naming the device when this
// program has none (built without it), or the factory's error (e.g. no usable GPU).
Result<std::unique_ptr<TrainBackend>> MakeTrainBackend(const std::string& device,
                                                       const TrainBackendArgs& args);

// The CPU backend: `model` computes on `store` in place; AdamW steps the host shard.
std::unique_ptr<TrainBackend> MakeCpuTrainBackend(Transformer* model, ShardedParams* store,
                                                  AdamW* adamw);

}  // namespace xt
