// CudaTrainBackend: train/backend.h's contract on one GPU (see train_backend_cuda.h).
#include "xtuner/cuda/train_backend_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/model_cuda.h"
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
  Result<double> GradSumOfSquares() override;
  Status Step(double lr, float grad_scale) override;
  Status SyncToHost() override;
  int64_t recompute_layers() const override { return recompute_layers_; }

 private:
  struct Run {  // a maximal range of the slab with one decay flag
    int64_t begin, end;
    bool decay;
  };
  CudaTrainBackend() = default;

  TrainBackendArgs args_;
  std::string description_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CudaModel> model_;
  float* m_ = nullptr;  // AdamW's moments over the whole slab
  float* v_ = nullptr;
  double* sum_sq_ = nullptr;  // one double: the gradient norm's square
  std::vector<Run> runs_;
  int64_t step_ = 0;  // AdamW's step count (the host's until SyncToHost)
  int64_t total_ = 0;
  int64_t recompute_layers_ = 0;
};

CudaTrainBackend::~CudaTrainBackend() {
  model_.reset();  // its buffers are freed on the stream: before the stream goes
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
  // One rank holds the whole slab, each range at its own offset.
  int64_t covered = 0;
  for (const OwnedRange& r : args.store->owned()) {
    if (r.shard != r.global)
      return Status::Error("train.device = \"cuda\": the host shard is not the whole model");
    covered += r.size;
  }
  if (covered != total || args.store->shard_size() != total || args.adamw->numel() != total)
    return Status::Error("train.device = \"cuda\": needs the whole model on one rank (shard " +
                         std::to_string(args.store->shard_size()) + " of " + std::to_string(total) +
                         " parameters)");

  std::unique_ptr<CudaTrainBackend> b(new CudaTrainBackend());
  b->args_ = args;
  b->total_ = total;
  b->step_ = args.adamw->step();
  int device = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&device), "device"));
  cudaDeviceProp prop{};
  XT_RETURN_IF_ERROR(Check(cudaGetDeviceProperties(&prop, device), "device properties"));
  char gib[32];
  std::snprintf(gib, sizeof gib, "%.1f GiB", double(prop.totalGlobalMem) / double(1 << 30));
  b->description_ = "cuda:" + std::to_string(device) + " (" + prop.name + ", " + gib + ")" +
                    (args.bf16 ? ", bf16 matmuls" : ", fp32 matmuls (no TF32)");
  XT_RETURN_IF_ERROR(
      Check(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking), "training stream"));
  XT_ASSIGN_OR_RETURN(b->model_, CudaModel::Create(*args.model, args.store->params(), b->stream_));
  b->model_->SetPrecision(args.bf16 ? GemmInput::kBf16 : GemmInput::kF32);
  b->model_->SetRecompute(args.recompute);
  b->recompute_layers_ = int64_t(std::llround(args.recompute * double(args.model->num_layers)));
  const size_t bytes = size_t(std::max<int64_t>(total, 1)) * sizeof(float);
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->m_, bytes), "AdamW exp_avg"));
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->v_, bytes), "AdamW exp_avg_sq"));
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->sum_sq_, sizeof(double)), "gradient norm"));
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpyAsync(b->m_, args.adamw->exp_avg().f32(), size_t(total) * sizeof(float),
                            cudaMemcpyHostToDevice, b->stream_),
            "AdamW exp_avg"));
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpyAsync(b->v_, args.adamw->exp_avg_sq().f32(), size_t(total) * sizeof(float),
                            cudaMemcpyHostToDevice, b->stream_),
            "AdamW exp_avg_sq"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(b->stream_), "upload"));
  // AdamW's runs: the decay ranges in slab order, adjacent ones with the same flag merged.
  std::vector<DecayRange> decay = args.decay;
  std::sort(decay.begin(), decay.end(),
            [](const DecayRange& x, const DecayRange& y) { return x.offset < y.offset; });
  for (const DecayRange& d : decay) {
    if (d.numel == 0) continue;
    if (!b->runs_.empty() && b->runs_.back().decay == d.weight_decay &&
        b->runs_.back().end == d.offset)
      b->runs_.back().end = d.offset + d.numel;
    else
      b->runs_.push_back({d.offset, d.offset + d.numel, d.weight_decay});
  }
  return std::unique_ptr<TrainBackend>(std::move(b));
}

Result<double> CudaTrainBackend::GradSumOfSquares() {
  XT_RETURN_IF_ERROR(SumOfSquares(sum_sq_, model_->grads(), total_, stream_));
  double out = 0;
  XT_RETURN_IF_ERROR(Check(
      cudaMemcpyAsync(&out, sum_sq_, sizeof(double), cudaMemcpyDeviceToHost, stream_), "norm"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(stream_), "gradient norm"));
  return out;
}

Status CudaTrainBackend::Step(double lr, float grad_scale) {
  if (!(lr >= 0) || !(grad_scale >= 0))
    return Status::Error("AdamW step: lr = " + std::to_string(lr) +
                         ", grad_scale = " + std::to_string(grad_scale));
  ++step_;
  const AdamWConfig& c = args_.adamw->config();
  const AdamWStepScalars scalars[2] = {
      MakeAdamWStepScalars(c.beta1, c.beta2, c.eps, c.weight_decay, step_, lr, grad_scale, false),
      MakeAdamWStepScalars(c.beta1, c.beta2, c.eps, c.weight_decay, step_, lr, grad_scale, true)};
  float* p = model_->params();
  const float* g = model_->grads();
  for (const Run& r : runs_)
    XT_RETURN_IF_ERROR(AdamWStep(p + r.begin, g + r.begin, m_ + r.begin, v_ + r.begin,
                                 r.end - r.begin, scalars[r.decay ? 1 : 0], stream_));
  return Status::OK();
}

Status CudaTrainBackend::SyncToHost() {
  XT_RETURN_IF_ERROR(model_->CopyParamsToHost(args_.store->params()));
  Tensor m = args_.adamw->exp_avg(), v = args_.adamw->exp_avg_sq();
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpy(m.f32(), m_, size_t(total_) * sizeof(float), cudaMemcpyDeviceToHost),
            "AdamW exp_avg"));
  XT_RETURN_IF_ERROR(
      Check(cudaMemcpy(v.f32(), v_, size_t(total_) * sizeof(float), cudaMemcpyDeviceToHost),
            "AdamW exp_avg_sq"));
  return args_.adamw->Restore(m, v, step_);  // the moments are in place: sets the step count
}

Result<std::unique_ptr<TrainBackend>> MakeCudaTrainBackend(const TrainBackendArgs& args) {
  return CudaTrainBackend::Create(args);
}

}  // namespace

void RegisterCudaTrainBackend() { RegisterTrainBackend("cuda", &MakeCudaTrainBackend, &ProbeCuda); }

}  // namespace xt::cuda
