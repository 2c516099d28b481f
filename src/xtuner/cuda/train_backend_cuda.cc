// CudaTrainBackend: train/backend.h's contract on one GPU (see train_backend_cuda.h).
#include "xtuner/cuda/train_backend_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/model_cuda.h"
#include "xtuner/cuda/nccl_comm.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/cuda/shard_memory_cuda.h"
#include "xtuner/cuda/sparse_slab.h"
#include "xtuner/cuda/staged_comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/optim/adamw_scalars.h"
#include "xtuner/plan/frozen_bf16.h"
#include "xtuner/plan/plan.h"

namespace xt::cuda {
namespace {

class CudaTrainBackend : public TrainBackend {
 public:
  static Result<std::unique_ptr<TrainBackend>> Create(const TrainBackendArgs& args);
  ~CudaTrainBackend() override;

  std::string Describe() const override { return description_; }
  Status ZeroGrads() override {
    shard_->ZeroGrads();  // queued; a failure ends the process (ShardMemory's contract)
    return Status::OK();
  }
  Result<BalanceStats> RouterStats(const Batch& batch) override {
    return model_->RouterStats(batch);
  }
  Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight, double aux_weight,
                                   const BalancePool& pool) override {
    return model_->ForwardBackward(batch, ce_weight, aux_weight, pool);
  }
  Result<double> GradSumOfSquares() override;
  Status Step(double lr, float grad_scale) override;
  Status AddToShard(const std::vector<ShardAdd>& adds) override;
  Status SyncToHost() override;
  int64_t recompute_layers() const override { return model_->recompute_layers(); }
  // This process's device memory at its high-water mark: everything it holds comes from the
  // device's memory pool (the shard, its gradients and moments, gathered units, activations,
  // scratch, bf16 copies; CudaModel tells the pool to keep what is freed), and the parameters'
  // mapped memory where they are held in part (a LoRA run's, its frozen weights in bf16 only).
  // Not counted: the CUDA context, NCCL's and the libraries' workspaces (a few hundred MiB). -1
  // (the host's figure) when the query fails.
  int64_t Bf16OnlyFloats() const override { return MappedBytes(shard_->bf16_ranges()); }
  int64_t PeakMemoryBytes() const override {
    int device = 0;
    cudaMemPool_t pool;
    uint64_t high = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess ||
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &high) != cudaSuccess)
      return -1;
    return int64_t(high) + memory_->held_bytes();
  }

 private:
  CudaTrainBackend() = default;
  // device (n) = host (n), queued on the stream.
  Status Upload(float* device, const float* host, int64_t n, const char* what);
  Status Download(float* host, const float* device, int64_t n, const char* what);
  // device (n bf16) = host (n floats) rounded, staged through the device 64 MiB at a time.
  Status UploadBf16(uint16_t* device, const float* host, int64_t n);

  TrainBackendArgs args_;
  std::string description_;
  cudaStream_t stream_ = nullptr;
  // More than one rank: device collectives (NCCL, or MPI staged through the host) over every
  // rank, the dp group (a rank's experts' shards) and the ep group (the other experts' holders;
  // parallel.ep > 1 only), all on stream_.
  std::unique_ptr<Comm> world_;
  std::unique_ptr<Comm> dp_, ep_;
  std::unique_ptr<ShardMemory> memory_;
  std::unique_ptr<ShardedParams> shard_;  // the host's shard, on the device
  // Where the shard's fp32 parameters hold memory ((offset, n): all of it, or a LoRA run's
  // without the frozen weights held in bf16 only), what is uploaded and synced back.
  SlabRanges fp32_held_;
  std::unique_ptr<CudaModel> model_;
  // AdamW's moments (memory_) of what trains only: the shard's runs that are not frozen, in
  // order (the whole shard but in a LoRA run, whose frozen weights have none).
  float* m_ = nullptr;
  float* v_ = nullptr;
  double* sum_sq_ = nullptr;     // this rank's share of the gradient norm's square, per range
  std::vector<DecayRun> runs_;   // AdamW over the shard
  std::vector<int64_t> run_at_;  // per run: where its moments start in m_, v_ (-1: frozen)
  // The shard's ranges with moments, adjacent runs merged: [shard, shard + n) at m_ + at.
  struct MomentRange {
    int64_t shard, at, n;
  };
  std::vector<MomentRange> moments_;
  int64_t moment_floats_ = 0;
  int64_t step_ = 0;  // AdamW's step count (the host's until SyncToHost)
};

CudaTrainBackend::~CudaTrainBackend() {
  // Everything below is freed on the stream: before the stream goes.
  model_.reset();
  if (memory_) {
    memory_->Free(m_);
    memory_->Free(v_);
  }
  shard_.reset();
  ep_.reset();
  dp_.reset();
  world_.reset();
  memory_.reset();
  if (sum_sq_) cudaFree(sum_sq_);
  if (stream_) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
}

Status ProbeCuda() {
  std::string why;
  if (!DeviceAvailable(&why))
    return Status::Error("train.device = \"cuda\": no usable CUDA device (" + why + ")");
  return Status::OK();
}

Result<std::unique_ptr<TrainBackend>> CudaTrainBackend::Create(const TrainBackendArgs& args) {
  XT_RETURN_IF_ERROR(ProbeCuda());
  if (!args.model || !args.store || !args.adamw || !args.world || !args.mesh)
    return Status::Error("train.device = \"cuda\": incomplete backend arguments");
  const ModelConfig& mc = *args.model;
  const Mesh& mesh = *args.mesh;
  const int ranks = args.world->size();
  if (ranks != mesh.world || args.world->rank() != mesh.rank)
    return Status::Error("train.device = \"cuda\": the world does not match the mesh");
  if (args.adamw->numel() != args.store->shard_size())
    return Status::Error("train.device = \"cuda\": the host shard and AdamW disagree");

  std::unique_ptr<CudaTrainBackend> b(new CudaTrainBackend());
  b->args_ = args;
  b->step_ = args.adamw->step();
  if (args.gpu_comm != "nccl" && args.gpu_comm != "mpi")
    return Status::Error("parallel.gpu_comm must be nccl or mpi, not \"" + args.gpu_comm + "\"");
  const bool staged = args.gpu_comm == "mpi";
  if (ranks > 1) {  // a GPU per rank, checked distinct (NCCL's need), before large allocations
    XT_RETURN_IF_ERROR(SelectLocalDevice().status());
    if (!staged) XT_RETURN_IF_ERROR(CheckDistinctDevices(*args.world));
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
    b->description_ +=
        "; " + std::to_string(ranks) + " GPUs, ZeRO-3 over " +
        (staged ? "MPI through host memory" : std::string("NCCL")) +
        " (units gathered, gradients reduce-scattered)" +
        (mesh.ep > 1 ? ", experts all-to-all over " + std::to_string(mesh.ep) + " GPUs" : "");
  XT_RETURN_IF_ERROR(
      Check(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking), "training stream"));
  Comm* world = args.world;  // one rank: nothing is gathered (checked below), no NCCL
  Comm* dp = args.world;
  Comm* ep = nullptr;
  if (ranks > 1) {
    if (staged) {  // on its own MPI communicator, apart from the trainer's host collectives
      std::unique_ptr<Comm> own = args.world->Split(0, args.world->rank());
      Comm* host = own.get();
      b->world_ = MakeStagedComm(host, b->stream_, std::move(own));
    } else {
      XT_ASSIGN_OR_RETURN(b->world_, NcclComm::Create(args.world, b->stream_));
    }
    // The trainer's host groups, on the device: the same colors and keys, in the same order.
    b->dp_ = b->world_->Split(mesh.ep_rank, mesh.dp_rank);
    if (mesh.ep > 1) b->ep_ = b->world_->Split(mesh.dp_rank, mesh.ep_rank);
    world = b->world_.get();
    dp = b->dp_.get();
    ep = b->ep_.get();
  }
  b->memory_ = MakeDeviceShardMemory(b->stream_);
  // A LoRA run in bf16: the frozen weights that enter matmuls only are held in bf16 only (their
  // fp32 parameters hold no memory; plan/frozen_bf16.h), in the model's copy on one GPU, in the
  // shard beside the fp32 parameters over several (ranges of this rank's working layout).
  SlabRanges bf16_only;
  std::string frozen_note;
  if (HoldsFrozenInBf16Only(mc, args.bf16, ranks, args.cuda_frozen_weights != "fp32")) {
    const Status vmm = SparseSlab::Supported();  // (else every weight in fp32, as before)
    if (vmm.ok())
      bf16_only = Bf16OnlyRanges(
          ParamLayout(mc, mesh.first_expert(mc), mc.is_moe() ? mesh.experts_per_rank(mc) : -1));
    else
      frozen_note = "; LoRA's frozen weights in fp32 too (" + vmm.message() + ")";
  }
  b->shard_ = std::make_unique<ShardedParams>(mc, mesh, world, dp, b->memory_.get(), bf16_only);
  const int64_t n = b->shard_->shard_size();
  b->fp32_held_ = b->shard_->fp32_ranges();
  if (n != args.store->shard_size() || b->shard_->owned().size() != args.store->owned().size())
    return Status::Error("train.device = \"cuda\": the device shard differs from the host's");
  if (ranks == 1)
    for (int64_t u = 0; u < int64_t(b->shard_->layout().units().size()); ++u)
      XT_CHECK(b->shard_->Held(u), "one rank's shard does not hold every unit whole");
  const bool split_experts = mc.is_moe() && mesh.ep > 1;
  XT_ASSIGN_OR_RETURN(b->model_,
                      CudaModel::CreateOver(mc, b->shard_.get(), b->stream_,
                                            split_experts ? mesh.first_expert(mc) : 0,
                                            split_experts ? mesh.experts_per_rank(mc) : -1, ep));
  const GemmInput in = args.bf16 ? GemmInput::kBf16 : GemmInput::kF32;
  b->model_->SetPrecision(in);
  b->model_->SetRecompute(args.recompute);
  // The kernel choices (validated with the config; checked again here for other callers).
  if (args.cuda_attention != "auto") {
    AttentionBf16Kernels kernels;
    if (!ParseAttentionBf16Kernels(args.cuda_attention, &kernels))
      return Status::Error("train.cuda_attention: unknown kernels \"" + args.cuda_attention + "\"");
    b->model_->SetAttentionBf16Kernels(kernels);
  }
  if (args.cuda_experts_gemm != "auto") {
    Blas::ExpertsPath path;
    if (!Blas::ParseExpertsPath(args.cuda_experts_gemm, &path) ||
        (path == Blas::ExpertsPath::kXtunerGrouped && !args.bf16))
      return Status::Error("train.cuda_experts_gemm: \"" + args.cuda_experts_gemm +
                           "\" is not a path for " + (args.bf16 ? "bf16" : "fp32"));
    b->model_->SetExpertsPath(in, path);
  }
  // AdamW's runs over the shard (the host's ranges, in shard coordinates) and the moments of
  // those that train.
  XT_ASSIGN_OR_RETURN(b->runs_, DecayRuns(args.decay, n, 0, n));
  for (const DecayRun& r : b->runs_) {
    b->run_at_.push_back(r.frozen ? -1 : b->moment_floats_);
    if (r.frozen || r.end == r.begin) continue;
    if (!b->moments_.empty() && b->moments_.back().shard + b->moments_.back().n == r.begin)
      b->moments_.back().n += r.end - r.begin;
    else
      b->moments_.push_back({r.begin, b->moment_floats_, r.end - r.begin});
    b->moment_floats_ += r.end - r.begin;
  }
  {  // Gradients held apart (compact_grads) lie as the moments do: the same ranges, in order.
    std::vector<std::pair<int64_t, int64_t>> merged;
    for (const auto& [at, k] : b->shard_->trainable_ranges())
      if (!merged.empty() && merged.back().first + merged.back().second == at)
        merged.back().second += k;
      else if (k > 0)
        merged.push_back({at, k});
    bool same = merged.size() == b->moments_.size();
    for (size_t i = 0; same && i < merged.size(); ++i)
      same = merged[i].first == b->moments_[i].shard && merged[i].second == b->moments_[i].n;
    XT_CHECK(same, "CudaTrainBackend: AdamW's frozen ranges differ from the shard's");
  }
  b->m_ = b->memory_->Alloc(b->moment_floats_, "AdamW's exp_avg");
  b->v_ = b->memory_->Alloc(b->moment_floats_, "AdamW's exp_avg_sq");
  const size_t norm_parts = std::max<size_t>(1, b->shard_->trainable_ranges().size());
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&b->sum_sq_, norm_parts * sizeof(double)), "gradient norm"));
  for (const auto& [at, k] : b->fp32_held_)
    XT_RETURN_IF_ERROR(
        b->Upload(b->shard_->params() + at, args.store->params() + at, k, "parameters"));
  if (b->shard_->params16()) {  // several GPUs: the shard's weights held in bf16 only, rounded
    int64_t at16 = 0;
    for (const auto& [at, k] : b->shard_->bf16_ranges()) {
      XT_RETURN_IF_ERROR(b->UploadBf16(b->shard_->params16() + at16, args.store->params() + at, k));
      at16 += k;
    }
  }
  for (const MomentRange& r : b->moments_) {
    XT_RETURN_IF_ERROR(
        b->Upload(b->m_ + r.at, args.adamw->exp_avg().f32() + r.shard, r.n, "exp_avg"));
    XT_RETURN_IF_ERROR(
        b->Upload(b->v_ + r.at, args.adamw->exp_avg_sq().f32() + r.shard, r.n, "exp_avg_sq"));
  }
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(b->stream_), "upload"));
  // Before the first step: whether the largest micro-batch fits beside the state, as `xtuner
  // plan --device cuda` plans it, in the device memory free once every rank's state is in place
  // and the pool holds nothing unused; ranks sharing a GPU (parallel.gpu_comm = "mpi") split it.
  // The same verdict on every rank (the least any rank has), an error naming the
  // model.recompute that would fit.
  if (args.micro_batch_size > 0 && args.max_length > 0) {
    cudaMemPool_t pool = nullptr;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) cudaMemPoolTrimTo(pool, 0);
    int sharing = 1;  // NCCL's ranks have a GPU each (CheckDistinctDevices)
    if (staged) {
      XT_ASSIGN_OR_RETURN(sharing, RanksSharingThisDevice(*args.world));
    }
    if (ranks > 1) args.world->Barrier();
    size_t free_bytes = 0, device_bytes = 0;
    const bool read = cudaMemGetInfo(&free_bytes, &device_bytes) == cudaSuccess;
    cudaGetLastError();
    // A rank that could not read its free memory makes every rank skip the check (1 > 0).
    double least = read ? -double(free_bytes / size_t(sharing)) : 1.0;
    args.world->AllReduceMax(&least, 1);
    if (least <= 0) {
      PlanInputs plan;
      plan.model = mc;
      plan.seq = args.max_length;
      plan.micro_batch_size = args.micro_batch_size;
      plan.world = ranks;
      plan.ep = mesh.ep;
      plan.recompute = args.recompute;
      plan.precision = args.bf16 ? Precision::kBf16 : Precision::kFp32;
      plan.device = Device::kCuda;
      plan.bf16_attention = AttentionBf16Device().ok();  // as the model decides
      std::string fits;
      XT_RETURN_IF_ERROR(CheckStepFits(plan, int64_t(-least), &fits));
      b->description_ += "; " + fits;
    } else {
      b->description_ += "; free device memory unknown, the step's need not checked";
    }
  }
  // One GPU: the weights held in bf16 only, rounded into the model's copy (after the check above,
  // which counts that copy among the step's needs, as the first step would make it otherwise).
  if (!bf16_only.empty()) {
    if (ranks == 1) XT_RETURN_IF_ERROR(b->model_->HoldInBf16Only(bf16_only, args.store->params()));
    char gb[32];
    std::snprintf(gb, sizeof gb, "%.2f GiB",
                  double(MappedBytes(b->shard_->bf16_ranges())) * 4 / double(1 << 30));
    b->description_ += "; LoRA's frozen matmul weights in bf16 only (" + std::string(gb) +
                       " of fp32 not held" + (ranks > 1 ? ", the shard's in bf16)" : ")");
  }
  b->description_ += frozen_note;
  return std::unique_ptr<TrainBackend>(std::move(b));
}

Status CudaTrainBackend::Upload(float* device, const float* host, int64_t n, const char* what) {
  if (n == 0) return Status::OK();
  return Check(
      cudaMemcpyAsync(device, host, size_t(n) * sizeof(float), cudaMemcpyHostToDevice, stream_),
      what);
}

Status CudaTrainBackend::UploadBf16(uint16_t* device, const float* host, int64_t n) {
  constexpr int64_t kStage = int64_t(1) << 24;  // floats
  DeviceArray<float> stage;
  for (int64_t i = 0; i < n; i += kStage) {
    const int64_t k = std::min(kStage, n - i);
    XT_RETURN_IF_ERROR(stage.Reserve(k, stream_));
    XT_RETURN_IF_ERROR(Upload(stage.get(), host + i, k, "parameters held in bf16"));
    XT_RETURN_IF_ERROR(ToBf16(device + i, stage.get(), k, stream_));
  }
  return Status::OK();
}

Status CudaTrainBackend::Download(float* host, const float* device, int64_t n, const char* what) {
  if (n == 0) return Status::OK();
  return Check(
      cudaMemcpyAsync(host, device, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost, stream_),
      what);
}

Result<double> CudaTrainBackend::GradSumOfSquares() {
  float* g = shard_->grads();
  // The whole shard, or (a LoRA run) the ranges that train: the frozen weights' gradients are
  // zero, and never read (as the CPU backend); held apart, they are the whole buffer.
  std::vector<std::pair<int64_t, int64_t>> parts = shard_->trainable_ranges();
  if (shard_->compact_grads()) parts = {{0, shard_->trainable_floats()}};
  if (shard_->trainable_floats() == shard_->shard_size()) parts = {{0, shard_->shard_size()}};
  for (size_t i = 0; i < parts.size(); ++i)
    XT_RETURN_IF_ERROR(SumOfSquares(sum_sq_ + i, g + parts[i].first, parts[i].second, stream_));
  std::vector<double> sums(parts.size());
  if (!parts.empty())
    XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(sums.data(), sum_sq_, parts.size() * sizeof(double),
                                             cudaMemcpyDeviceToHost, stream_),
                             "norm"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(stream_), "gradient norm"));
  double out = 0;
  for (const double s : sums) out += s;
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
  float* p = shard_->params();
  const float* g = shard_->grads();
  // The weights' bf16 copies written in the same pass (bf16 mode), where the shard is the whole
  // model in its layout's order (one rank), so that shard and layout offsets agree.
  bool whole = shard_->shard_size() == model_->layout().total();
  for (const OwnedRange& r : shard_->owned()) whole = whole && r.global == r.shard;
  const Bf16Mirror mirror = whole ? model_->bf16_mirror() : Bf16Mirror{};
  for (size_t i = 0; i < runs_.size(); ++i) {
    const DecayRun& r = runs_[i];
    if (r.frozen) continue;  // a LoRA run's base weights: no update, no moments
    // The run's gradients: at its shard offset, or held apart as its moments are.
    const float* g_run = g + (shard_->compact_grads() ? run_at_[i] : r.begin);
    XT_RETURN_IF_ERROR(AdamWStepRange(p, g_run, m_ + run_at_[i], v_ + run_at_[i], r.begin, r.end,
                                      scalars[r.decay ? 1 : 0], mirror, stream_));
  }
  model_->ParamsChanged(mirror.data != nullptr);
  return Status::OK();
}

Status CudaTrainBackend::AddToShard(const std::vector<ShardAdd>& adds) {
  if (adds.empty()) return Status::OK();
  std::vector<int64_t> at(adds.size());
  std::vector<float> delta(adds.size());
  for (size_t i = 0; i < adds.size(); ++i) at[i] = adds[i].at, delta[i] = adds[i].delta;
  DeviceArray<int64_t> at_d;
  DeviceArray<float> delta_d;
  XT_RETURN_IF_ERROR(at_d.Upload(at.data(), int64_t(at.size()), stream_));
  XT_RETURN_IF_ERROR(delta_d.Upload(delta.data(), int64_t(delta.size()), stream_));
  // Parameters outside the matmuls (a router's bias): their bf16 copies are never read.
  return AddAt(shard_->params(), at_d.get(), delta_d.get(), int64_t(adds.size()), stream_);
}

Status CudaTrainBackend::SyncToHost() {
  Tensor m = args_.adamw->exp_avg(), v = args_.adamw->exp_avg_sq();
  // (The weights held in bf16 only are frozen: the host's are as they were uploaded.)
  for (const auto& [at, k] : fp32_held_)
    XT_RETURN_IF_ERROR(
        Download(args_.store->params() + at, shard_->params() + at, k, "parameters to the host"));
  for (const MomentRange& r : moments_) {  // (the frozen weights' host moments stay zero)
    XT_RETURN_IF_ERROR(Download(m.f32() + r.shard, m_ + r.at, r.n, "exp_avg to the host"));
    XT_RETURN_IF_ERROR(Download(v.f32() + r.shard, v_ + r.at, r.n, "exp_avg_sq to the host"));
  }
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(stream_), "sync to host"));
  return args_.adamw->Restore(m, v, step_);  // the moments are in place: sets the step count
}

Result<std::unique_ptr<TrainBackend>> MakeCudaTrainBackend(const TrainBackendArgs& args) {
  return CudaTrainBackend::Create(args);
}

}  // namespace

void RegisterCudaTrainBackend() { RegisterTrainBackend("cuda", &MakeCudaTrainBackend, &ProbeCuda); }

}  // namespace xt::cuda
