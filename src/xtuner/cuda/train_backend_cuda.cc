// CudaTrainBackend: train/backend.h's contract on one GPU (see train_backend_cuda.h).
#include "xtuner/cuda/train_backend_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/model_cuda.h"
#include "xtuner/cuda/nccl_comm.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/optim/adamw_scalars.h"

namespace xt::cuda {
namespace {

class CudaTrainBackend : public TrainBackend {
 public:
  static Result<std::unique_ptr<TrainBackend>> Create(const TrainBackendArgs& args);
  ~CudaTrainBackend() override;

  std::string Describe() const override { return description_; }
  Status ZeroGrads() override { return model_->ZeroGrads(); }
  Result<BalanceStats> RouterStats(const Batch& batch) override {
    return model_->RouterStats(batch);
  }
  Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight, double aux_weight,
                                   const BalancePool& pool) override {
    return model_->ForwardBackward(batch, ce_weight, aux_weight, pool);
  }
  Status FinishGradients() override;
  Result<double> GradSumOfSquares() override;
  Status Step(double lr, float grad_scale) override;
  Status SyncToHost() override;
  int64_t recompute_layers() const override { return model_->recompute_layers(); }
  // This process's device memory at its high-water mark: the state (parameters, gradients and
  // two moments, fp32) and the most the memory pool has held (activations, scratch, the bf16
  // weights; CudaModel tells it to keep what is freed). Not counted: the CUDA context and the
  // library workspaces (a few hundred MiB). -1 (the host's figure) when the query fails.
  int64_t PeakMemoryBytes() const override {
    int device = 0;
    cudaMemPool_t pool;
    uint64_t high = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &high) != cudaSuccess)
      return -1;
    return int64_t(high) + 4 * int64_t(sizeof(float)) * total_;
  }

 private:
  CudaTrainBackend() = default;
  // device[global, global + n) = host[shard, shard + n), queued on the stream.
  Status Upload(float* device, const float* host, int64_t global, int64_t shard, int64_t n);

  TrainBackendArgs args_;
  std::string description_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CudaModel> model_;
  std::unique_ptr<NcclComm> nccl_;  // more than one rank: the gradients' all-reduce
  float* m_ = nullptr;              // AdamW's moments over the whole slab
  float* v_ = nullptr;
  double* sum_sq_ = nullptr;    // one double: the gradient norm's square
  std::vector<DecayRun> runs_;  // AdamW over the whole slab
  int64_t step_ = 0;            // AdamW's step count (the host's until SyncToHost)
  int64_t total_ = 0;
};

CudaTrainBackend::~CudaTrainBackend() {
  model_.reset();  // its buffers are freed on the stream: before the stream goes
  nccl_.reset();
  if (m_) cudaFree(m_);
  if (v_) cudaFree(v_);
  if (sum_sq_) cudaFree(sum_sq_);
  if (stream_) cudaStreamDestroy(stream_);
}

Status ProbeCuda() {
  std::string why;
  if (!DeviceAvailable(&why))
    return Status::Error("train.device = \"cuda\": no usable CUDA device (" + why + ")");
  return Status::OK();
}

Result<std::unique_ptr<TrainBackend>> CudaTrainBackend::Create(const TrainBackendArgs& args) {
  XT_RETURN_IF_ERROR(ProbeCuda());
  const ParamLayout layout(*args.model);
  const int64_t total = layout.total();
  const int ranks = args.world ? args.world->size() : 1;
  // Every rank holds the whole model (data parallel; the host keeps its ZeRO-3 shard).
  int64_t covered = 0;
  for (const OwnedRange& r : args.store->owned()) covered += r.size;
  if (covered != args.store->shard_size() || args.adamw->numel() != covered)
    return Status::Error("train.device = \"cuda\": the host shard and AdamW disagree");

  std::unique_ptr<CudaTrainBackend> b(new CudaTrainBackend());
  b->args_ = args;
  b->total_ = total;
  b->step_ = args.adamw->step();
  if (ranks > 1) {  // a GPU per rank, checked distinct, before anything large is allocated
    XT_RETURN_IF_ERROR(SelectLocalDevice().status());
    XT_RETURN_IF_ERROR(CheckDistinctDevices(*args.world));
  }
  int device = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&device), "device"));
  cudaDeviceProp prop{};
  XT_RETURN_IF_ERROR(Check(cudaGetDeviceProperties(&prop, device), "device properties"));
  char gib[32];
  std::snprintf(gib, sizeof gib, "%.1f GiB", double(prop.totalGlobalMem) / double(1 << 30));
  b->description_ = "cuda:" + std::to_string(device) + " (" + prop.name + ", " + gib + ")" +
                    (args.bf16 ? ", bf16 matmuls" : ", fp32 matmuls (no TF32)");
  if (ranks > 1)
    b->description_ += "; " + std::to_string(ranks) +
                       " GPUs, data parallel (each holds the whole model and AdamW state; "
                       "gradients all-reduced over NCCL)";
  XT_RETURN_IF_ERROR(
      Check(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking), "training stream"));
  if (ranks > 1) {
    XT_ASSIGN_OR_RETURN(b->nccl_, NcclComm::Create(args.world, b->stream_));
  }
  if (ranks == 1)  // the host shard is the whole slab, each range at its own offset
    for (const OwnedRange& r : args.store->owned())
      XT_CHECK(r.shard == r.global, "one rank's host shard is not in slab order");
  const bool whole = ranks == 1;  // the host shard is the whole slab, in slab order
  XT_ASSIGN_OR_RETURN(
      b->model_,
      CudaModel::Create(*args.model, whole ? args.store->params() : nullptr, b->stream_));
  b->model_->SetPrecision(args.bf16 ? GemmInput::kBf16 : GemmInput::kF32);
  b->model_->SetRecompute(args.recompute);
  const size_t bytes = size_t(std::max<int64_t>(total, 1)) * sizeof(float);
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->m_, bytes), "AdamW exp_avg"));
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->v_, bytes), "AdamW exp_avg_sq"));
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->sum_sq_, sizeof(double)), "gradient norm"));
  const float* host_m = args.adamw->exp_avg().f32();
  const float* host_v = args.adamw->exp_avg_sq().f32();
  if (whole) {
    XT_RETURN_IF_ERROR(b->Upload(b->m_, host_m, 0, 0, total));
    XT_RETURN_IF_ERROR(b->Upload(b->v_, host_v, 0, 0, total));
  } else {
    // The whole state from the ranks' shards: each rank writes the ranges it owns into zeroed
    // slabs, and a sum over the ranks (every other rank adds zeros: exact) completes them.
    for (float* slab : {b->model_->params(), b->m_, b->v_})
      XT_RETURN_IF_ERROR(Check(cudaMemsetAsync(slab, 0, bytes, b->stream_), "state"));
    for (const OwnedRange& r : args.store->owned()) {
      XT_RETURN_IF_ERROR(
          b->Upload(b->model_->params(), args.store->params(), r.global, r.shard, r.size));
      XT_RETURN_IF_ERROR(b->Upload(b->m_, host_m, r.global, r.shard, r.size));
      XT_RETURN_IF_ERROR(b->Upload(b->v_, host_v, r.global, r.shard, r.size));
    }
    for (float* slab : {b->model_->params(), b->m_, b->v_}) b->nccl_->AllReduceSum(slab, total);
  }
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(b->stream_), "upload"));
  // AdamW's runs over the whole slab, from the decay ranges the host's shard was cut from.
  XT_ASSIGN_OR_RETURN(b->runs_, DecayRuns(DefaultDecayRanges(layout), total, 0, total));
  return std::unique_ptr<TrainBackend>(std::move(b));
}

Status CudaTrainBackend::Upload(float* device, const float* host, int64_t global, int64_t shard,
                                int64_t n) {
  if (n == 0) return Status::OK();
  return Check(cudaMemcpyAsync(device + global, host + shard, size_t(n) * sizeof(float),
                               cudaMemcpyHostToDevice, stream_),
               "upload");
}

Status CudaTrainBackend::FinishGradients() {
  if (nccl_) nccl_->AllReduceSum(model_->grads(), total_);  // queued on stream_
  return Status::OK();
}

Result<double> CudaTrainBackend::GradSumOfSquares() {
  // The gradients are the same on every rank after FinishGradients: rank 0's share is the
  // whole sum, the others' nothing.
  if (nccl_ && nccl_->rank() != 0) return 0.0;
  XT_RETURN_IF_ERROR(SumOfSquares(sum_sq_, model_->grads(), total_, stream_));
  double out = 0;
  XT_RETURN_IF_ERROR(Check(
      cudaMemcpyAsync(&out, sum_sq_, sizeof(double), cudaMemcpyDeviceToHost, stream_), "norm"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(stream_), "gradient norm"));
  return out;
}

Status CudaTrainBackend::Step(double lr, float grad_scale) {
  if (!(lr >= 0) || !std::isfinite(lr) || !(grad_scale >= 0) || !std::isfinite(grad_scale))
    return Status::Error("AdamW step: lr = " + std::to_string(lr) +
                         ", grad_scale = " + std::to_string(grad_scale));
  ++step_;
  const AdamWConfig& c = args_.adamw->config();
  const AdamWStepScalars scalars[2] = {
      MakeAdamWStepScalars(c.beta1, c.beta2, c.eps, c.weight_decay, step_, lr, grad_scale, false),
      MakeAdamWStepScalars(c.beta1, c.beta2, c.eps, c.weight_decay, step_, lr, grad_scale, true)};
  float* p = model_->params();
  const float* g = model_->grads();
  for (const DecayRun& r : runs_)
    XT_RETURN_IF_ERROR(AdamWStep(p + r.begin, g + r.begin, m_ + r.begin, v_ + r.begin,
                                 r.end - r.begin, scalars[r.decay ? 1 : 0], stream_));
  return Status::OK();
}

Status CudaTrainBackend::SyncToHost() {
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(stream_), "sync to host"));
  Tensor m = args_.adamw->exp_avg(), v = args_.adamw->exp_avg_sq();
  // The ranges this rank's host shard owns (one rank: the whole slab, in slab order).
  for (const OwnedRange& r : args_.store->owned()) {
    if (r.size == 0) continue;
    const size_t bytes = size_t(r.size) * sizeof(float);
    XT_RETURN_IF_ERROR(
        Check(cudaMemcpy(args_.store->params() + r.shard, model_->params_view() + r.global, bytes,
                         cudaMemcpyDeviceToHost),
              "parameters to the host"));
    XT_RETURN_IF_ERROR(Check(
        cudaMemcpy(m.f32() + r.shard, m_ + r.global, bytes, cudaMemcpyDeviceToHost), "exp_avg"));
    XT_RETURN_IF_ERROR(Check(
        cudaMemcpy(v.f32() + r.shard, v_ + r.global, bytes, cudaMemcpyDeviceToHost), "exp_avg_sq"));
  }
  return args_.adamw->Restore(m, v, step_);  // the moments are in place: sets the step count
}

Result<std::unique_ptr<TrainBackend>> MakeCudaTrainBackend(const TrainBackendArgs& args) {
  return CudaTrainBackend::Create(args);
}

}  // namespace

void RegisterCudaTrainBackend() { RegisterTrainBackend("cuda", &MakeCudaTrainBackend, &ProbeCuda); }

}  // namespace xt::cuda
