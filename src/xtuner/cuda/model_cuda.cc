// CudaModel: Transformer::Run's forward and backward (model/transformer.cc, transformer_moe.cc)
// step for step on the CUDA ops. Host C++ (compiled by the C++ compiler, not nvcc): it only
// queues kernels and library calls.
#include "xtuner/cuda/model_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/attention_block.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/grad_writes.h"
#include "xtuner/cuda/lora_terms.h"
#include "xtuner/cuda/loss_cuda.h"
#include "xtuner/cuda/moe_block.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/cuda/step_products.h"
#include "xtuner/dist/comm.h"
#include "xtuner/loss/balance.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/model/rope_tables.h"
#include "xtuner/ops/ops.h"
#include "xtuner/plan/cuda_step.h"

namespace xt::cuda {
namespace {

using F = DeviceArray<float>;
using I = DeviceArray<int32_t>;

}  // namespace

// Create's whole slabs served as units: nothing to gather or fold, and held (bf16 copies last
// until the parameters change). ZeroGrads marks every unit's gradients blank: zeroed when a unit
// is first asked for by Grads (or by Settle), handed blank to GradsToWrite.
class CudaModel::LocalSource : public ParamSource {
 public:
  explicit LocalSource(CudaModel* m) : m_(m), blank_(m->layout_.units().size(), 0) {}
  const float* Acquire(int64_t u) override { return m_->params_ + m_->layout_.units()[u].begin; }
  void Release(int64_t) override {}
  float* Grads(int64_t u) override {  // what of the unit trains (param_source.h)
    if (blank_[u]) XT_CHECK(Zero(u).ok(), "CudaModel: zeroing gradients failed");
    return m_->grads_ + m_->layout_.trainable(u).begin;
  }
  float* GradsToWrite(int64_t u, bool* blank) override {
    *blank = blank_[u] != 0;  // until GradsDone: a step that fails midway leaves it blank
    return m_->grads_ + m_->layout_.trainable(u).begin;
  }
  void GradsDone(int64_t u) override { blank_[u] = 0; }
  bool Held(int64_t) const override { return true; }
  void BlankAll() { std::fill(blank_.begin(), blank_.end(), 1); }
  // Zeroes the units still blank.
  Status Settle() {
    for (int64_t u = 0; u < int64_t(blank_.size()); ++u)
      if (blank_[u]) XT_RETURN_IF_ERROR(Zero(u));
    return Status::OK();
  }

 private:
  Status Zero(int64_t u) {  // (the frozen weights' gradients stay the zeros Create made)
    const ParamUnit& r = m_->layout_.trainable(u);
    blank_[u] = 0;
    return Check(cudaMemsetAsync(m_->grads_ + r.begin, 0, size_t(r.size()) * sizeof(float),
                                 cudaStream_t(m_->stream_)),
                 "zero gradients");
  }
  CudaModel* m_;
  std::vector<char> blank_;  // per unit
};

// Everything one micro-batch keeps between its forward and its backward.
struct CudaModel::Buffers {
  struct Layer {
    F h1, rstd1, x_mid, h2, rstd2;
    AttentionActs att;  // attention's (cuda/attention_block.h)
    MoeActs moe;        // an MoE layer's (cuda/moe_block.h)
    // A dense layer's MLP: SwiGLU's input and output (gu, act). In bf16 mode the MLP's input and
    // SwiGLU's output are held in bf16 (h2_16, act16 in place of h2, act) as its products round
    // them, and SwiGLU's input is kept for the backward in bf16 (gu16 in place of gu: the
    // forward uses it in fp32, then frees it). In both kinds of layer the q/k/v projections'
    // input is held in bf16 in bf16 mode (h1_16 in place of h1).
    F gu, act;
    DeviceArray<uint16_t> h1_16, act16, gu16, h2_16;
    int64_t Bytes() const {
      int64_t n = att.Bytes() + moe.Bytes();
      for (const F* f : {&h1, &rstd1, &x_mid, &h2, &rstd2, &gu, &act})
        n += f->size() * int64_t(sizeof(float));
      for (const DeviceArray<uint16_t>* h : {&h1_16, &act16, &gu16, &h2_16})
        n += h->size() * int64_t(sizeof(uint16_t));
      return n;
    }
  };
  F cos, sin;
  I ids;
  std::vector<F> x;  // L + 1: the input of layer l, then the final hidden states before the norm
  std::vector<Layer> layers;
  F h_final, rstd_final;
  DeviceArray<double> count, prob_sum;  // (E): pooled balancing statistics
  DeviceArray<uint64_t> noise;          // (T): the batch's noise keys where LoRA's dropout drops
};

CudaModel::CudaModel(const ModelConfig& cfg, int64_t expert_begin, int64_t expert_count)
    : cfg_(cfg),
      layout_(cfg_, expert_begin, expert_count),
      bf16_copies_(std::make_unique<Bf16Copies>(layout_, cfg_.tie_word_embeddings)) {}

CudaModel::~CudaModel() {
  if (params_) cudaFree(params_);
  if (grads_) cudaFree(grads_);
}

float* CudaModel::Slab(float* p) const {
  XT_CHECK(local_ != nullptr,
           "CudaModel: a model over a ParamSource (CreateOver) has no whole slabs");
  return p;
}

Status CudaModel::Init(void* stream) {
  // LoRA adapters where the GPU applies them (cuda/lora_terms.h): attention's projections and a
  // dense layer's MLP. (ResolveLora refuses MLP targets in an MoE model: only a hand-made config
  // could put adapters on its shared experts.)
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const LayerOffsets& o = layout_.layers[l];
    for (const LoraPiece& p : o.lora) {
      const bool dense_mlp = o.router < 0 && (p.base == o.gate_up || p.base == o.down);
      bool attention = false;
      for (int64_t w : {o.wq, o.wk, o.wv, o.wo, o.q_a, o.kv_a, o.kv_b})
        attention = attention || p.base == w;
      if (!dense_mlp && !attention)
        return Status::Error("CudaModel: a LoRA adapter of layer " + std::to_string(l) +
                             "'s MoE MLP (shared experts): the GPU adapts only attention and "
                             "dense MLP layers");
    }
  }
  stream_ = stream;
  // The device's pool keeps freed blocks (the default hands them back at every synchronisation):
  // every step allocates the same buffers again, stream-ordered, without a device-wide sync.
  int device = 0, pools = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&device), "memory pool"));
  XT_RETURN_IF_ERROR(Check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
                           "memory pool"));
  if (!pools)
    return Status::Error("CUDA device " + std::to_string(device) +
                         " does not support stream-ordered allocation (cudaMallocAsync), which "
                         "the CUDA model needs");
  cudaMemPool_t mem_pool;
  XT_RETURN_IF_ERROR(Check(cudaDeviceGetDefaultMemPool(&mem_pool, device), "memory pool"));
  uint64_t keep = UINT64_MAX;
  XT_RETURN_IF_ERROR(Check(
      cudaMemPoolSetAttribute(mem_pool, cudaMemPoolAttrReleaseThreshold, &keep), "memory pool"));
  XT_ASSIGN_OR_RETURN(blas_, Blas::Create(stream));
  return Status::OK();
}

Result<std::unique_ptr<CudaModel>> CudaModel::Create(const ModelConfig& cfg,
                                                     const float* host_params, void* stream) {
  std::unique_ptr<CudaModel> m(new CudaModel(cfg, 0, -1));
  XT_RETURN_IF_ERROR(m->Init(stream));
  m->local_ = std::make_unique<LocalSource>(m.get());
  m->SetSource(m->local_.get());
  const size_t bytes = size_t(m->layout_.total()) * sizeof(float);
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&m->params_, std::max<size_t>(bytes, 4)), "parameters"));
  XT_RETURN_IF_ERROR(Check(cudaMalloc(&m->grads_, std::max<size_t>(bytes, 4)), "gradients"));
  // Zeros once: a LoRA run's frozen weights' gradients are never written (ZeroGrads' lazy
  // zeroing then covers only what trains).
  XT_RETURN_IF_ERROR(
      Check(cudaMemsetAsync(m->grads_, 0, std::max<size_t>(bytes, 4), cudaStream_t(stream)),
            "gradients"));
  // On the model's stream (which need not be ordered with the default one), then waited for.
  if (host_params) {
    XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(m->params_, host_params, bytes, cudaMemcpyHostToDevice,
                                             cudaStream_t(stream)),
                             "parameters"));
  } else {
    XT_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(m->params_, 0, bytes, cudaStream_t(stream)), "parameters"));
  }
  XT_RETURN_IF_ERROR(m->ZeroGrads());
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(stream)), "parameters"));
  return m;
}

Result<std::unique_ptr<CudaModel>> CudaModel::CreateOver(const ModelConfig& cfg,
                                                         ParamSource* source, void* stream,
                                                         int64_t expert_begin, int64_t expert_count,
                                                         Comm* ep) {
  if (!source) return Status::Error("CudaModel::CreateOver: no parameter source");
  const int64_t E = cfg.num_experts;
  const bool split = cfg.is_moe() && expert_count >= 0 && expert_count < E;
  if (split) {
    if (!ep || expert_count <= 0 || int64_t(ep->size()) * expert_count != E ||
        expert_begin != int64_t(ep->rank()) * expert_count)
      return Status::Error("CudaModel::CreateOver: experts [" + std::to_string(expert_begin) +
                           ", " + std::to_string(expert_begin + expert_count) + ") of " +
                           std::to_string(E) +
                           " are not this rank's slice of an expert-parallel group of " +
                           std::to_string(ep ? ep->size() : 0) + " ranks");
  } else if (ep && ep->size() > 1) {
    return Status::Error("CudaModel::CreateOver: an expert-parallel group of " +
                         std::to_string(ep->size()) + " ranks for a model that holds every expert");
  }
  std::unique_ptr<CudaModel> m(
      new CudaModel(cfg, split ? expert_begin : 0, split ? expert_count : -1));
  XT_RETURN_IF_ERROR(m->Init(stream));
  m->SetSource(source);
  m->ep_ = split ? ep : nullptr;
  return m;
}

void CudaModel::SetSource(ParamSource* source) {
  source_ = source;
  // The bf16 mirror: where the source holds every unit whose weights enter matmuls.
  bool held = true;
  for (int64_t u = bf16_copies_->mirror_unit(); u < int64_t(layout_.units().size()); ++u)
    held = held && source->Held(u);
  bf16_copies_->SetMirrorPossible(held);
}

void CudaModel::ParamsChanged(bool mirror_written) { bf16_copies_->ParamsChanged(mirror_written); }

Bf16Mirror CudaModel::bf16_mirror() const {
  return precision_ == GemmInput::kBf16 ? bf16_copies_->mirror() : Bf16Mirror{};
}

Status CudaModel::HoldInBf16Only(SlabRanges ranges, const float* host) {
  if (precision_ != GemmInput::kBf16)
    return Status::Error("CudaModel: weights held in bf16 only need bf16 mode");
  XT_RETURN_IF_ERROR(bf16_copies_->SetBf16Only(ranges));
  XT_RETURN_IF_ERROR(bf16_copies_->ReserveMirror(stream_));
  const Bf16Mirror mirror = bf16_copies_->mirror();
  constexpr int64_t kStage = int64_t(1) << 24;  // floats
  DeviceArray<float> stage;
  for (const auto& [at, n] : ranges)
    for (int64_t i = 0; i < n; i += kStage) {
      const int64_t k = std::min(kStage, n - i);
      XT_RETURN_IF_ERROR(stage.Reserve(k, stream_));
      XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(stage.get(), host + at + i, size_t(k) * 4,
                                               cudaMemcpyHostToDevice, cudaStream_t(stream_)),
                               "weights held in bf16 only"));
      XT_RETURN_IF_ERROR(ToBf16(mirror.data + (at + i - mirror.begin), stage.get(), k, stream_));
    }
  return Check(cudaStreamSynchronize(cudaStream_t(stream_)), "weights held in bf16 only");
}

float* CudaModel::params() {
  bf16_copies_->ParamsChanged(false);
  return Slab(params_);
}

void CudaModel::SetRecompute(double fraction) {
  XT_CHECK(fraction >= 0 && fraction <= 1, "recompute fraction must be in [0, 1]");
  recompute_layers_ = int64_t(std::llround(fraction * double(cfg_.num_layers)));
}

Status CudaModel::ZeroGrads() {
  Slab(grads_);
  local_->BlankAll();
  return Status::OK();
}

float* CudaModel::grads() {
  XT_CHECK(local_->Settle().ok(), "CudaModel: zeroing gradients failed");
  return Slab(grads_);
}

Status CudaModel::CopyParamsToHost(float* out) const {
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(stream_)), "copy parameters"));
  return Check(cudaMemcpy(out, Slab(params_), size_t(layout_.total()) * 4, cudaMemcpyDeviceToHost),
               "copy parameters");
}

Status CudaModel::CopyGradsToHost(float* out) const {
  Slab(grads_);
  XT_RETURN_IF_ERROR(local_->Settle());
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(stream_)), "copy gradients"));
  return Check(cudaMemcpy(out, Slab(grads_), size_t(layout_.total()) * 4, cudaMemcpyDeviceToHost),
               "copy gradients");
}

Result<LossInfo> CudaModel::ForwardBackward(const Batch& b, double ce_weight, double aux_weight,
                                            const BalancePool& pool) {
  return Guarded(b, ce_weight, aux_weight, pool, /*router_only=*/false);
}

Result<BalanceStats> CudaModel::RouterStats(const Batch& b) {
  XT_ASSIGN_OR_RETURN(LossInfo info, Guarded(b, -1, -1, {}, /*router_only=*/true));
  return std::move(info.balance);
}

Result<LossInfo> CudaModel::Guarded(const Batch& b, double ce_weight, double aux_weight,
                                    const BalancePool& pool, bool router_only) {
  if (!failed_.empty())
    return Status::Error("CudaModel: an earlier step failed midway (" + failed_ +
                         "), which may have left units of its parameter source gathered or "
                         "their gradients open: make a new model and source");
  Result<LossInfo> r = Run(b, ce_weight, aux_weight, pool, router_only);
  // The model's own slabs keep nothing between calls; another source may (ZeRO-3's gathered
  // units), so a step that stopped midway ends this model's use.
  if (!r.ok() && !local_ && b.Validate(cfg_.vocab_size).ok()) failed_ = r.status().message();
  return r;
}

Result<LossInfo> CudaModel::Run(const Batch& b, double ce_weight, double aux_weight,
                                const BalancePool& pool, bool router_only) {
  XT_RETURN_IF_ERROR(b.Validate(cfg_.vocab_size));
  const int64_t T = b.num_tokens(), H = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t L = cfg_.num_layers, D = cfg_.head_dim;
  const int64_t E = cfg_.num_experts;
  const float eps = float(cfg_.rms_norm_eps);
  void* s = stream_;
  Blas& blas = *blas_;
  // The step's phases, timed when a profile is set (not for the router-only pass).
  StepProfile* const prof = router_only ? nullptr : profile_;
  if (prof) prof->Begin();
  auto mark = [&](const char* phase) { return prof ? prof->Mark(phase, s) : Status::OK(); };
  const bool tied = cfg_.tie_word_embeddings;
  const int64_t head = layout_.head_unit();
  // bf16 matmuls (as ops::gemm in MatmulPrecision::kBf16): both operands rounded to bf16, fp32
  // sums and output. Weights come from the bf16 copy of their unit (see acquire below);
  // activations are rounded into scratch right before their product. The router stays fp32, as on
  // the CPU.
  const bool bf16 = precision_ == GemmInput::kBf16;
  // Attention's products on the tensor cores too in bf16 mode, where the kernels take the head
  // dim (attention_bf16.h); the fp32 kernels otherwise.
  // (Multi-head latent attention and GPT-OSS's sinks and windows run on the fp32 kernels.)
  const bool bf16_attention = PlansBf16Attention(cfg_, bf16, bf16_attention_) &&
                              AttentionBf16Supports(D) && AttentionBf16Device().ok();
  // The experts' rows that only feed bf16 products held in bf16 (their producers round them as
  // the products would): the permuted input rows, SwiGLU's output and the gradients of both
  // expert products' outputs; under expert parallelism the rows and output gradients travel in
  // bf16 too (as float pairs: an even hidden size).
  // (Not GPT-OSS's experts: their bias gradients read the rows in fp32.)
  const bool rows16 = PlansRows16(cfg_, bf16, ep_ != nullptr);
  Bf16Copies& units16 = *bf16_copies_;
  units16.BeginStep();
  // Units in use, from the source: parameters (and their bf16 copy in bf16 mode, made once per
  // parameter update for held units, at every acquisition for gathered ones) and gradients.
  // matmuls: whether the unit's weights enter matmuls now (not for the embedding's lookup).
  auto acquire = [&](int64_t u, bool matmuls = true) -> Result<UnitParams> {
    const float* p = source_->Acquire(u);
    if (bf16 && matmuls) XT_RETURN_IF_ERROR(units16.Acquire(u, p, s));
    return UnitParams{p, layout_.units()[u].begin};
  };
  auto release = [&](int64_t u) {
    source_->Release(u);
    if (bf16) units16.Release(u, source_->Held(u));
  };
  // Gradients: each unit's buffer from the source, written where it comes blank (GradWrites:
  // every product into a gradient takes its beta from `writes`, every kernel that adds into one
  // is prepared by it), closed before the source folds it. The buffer holds what of the unit
  // trains (ParamLayout::trainable): all of it, or a LoRA run's adapters. UnitGrads gives null
  // for the frozen weights, whose products and kernels then skip their gradient; a unit with
  // nothing that trains (the embedding and the head of a LoRA run) asks the source for none.
  GradWrites writes;
  std::vector<float*> grad_base(layout_.units().size(), nullptr);
  auto grads = [&](int64_t u) {
    const ParamUnit& t = layout_.trainable(u);
    if (t.size() == 0) return UnitGrads{};  // null for every offset
    if (!grad_base[u]) {
      bool blank = false;
      grad_base[u] = source_->GradsToWrite(u, &blank);
      writes.Open(grad_base[u], t.size(), blank);
    }
    return UnitGrads{grad_base[u], t.begin, t.end};
  };
  auto grads_done = [&](int64_t u) -> Status {
    if (grad_base[u]) XT_RETURN_IF_ERROR(writes.Close(grad_base[u], s));
    grad_base[u] = nullptr;
    source_->GradsDone(u);
    return Status::OK();
  };
  // The step's products, fp32 or bf16, the grouped ones over the experts this rank runs (all of
  // them, or its slice under expert parallelism).
  StepProducts mm(blas, units16, writes, bf16, ep_ ? layout_.expert_count : E, s);

  Buffers bu;
  {
    std::vector<float> cos, sin;
    ComputeRopeTables(b, cfg_, &cos, &sin);
    XT_RETURN_IF_ERROR(bu.cos.Upload(cos.data(), int64_t(cos.size()), s));
    XT_RETURN_IF_ERROR(bu.sin.Upload(sin.data(), int64_t(sin.size()), s));
  }
  // LoRA's dropout: every pass here trains (the backward, or its router statistics).
  if (cfg_.lora.dropout > 0 && !b.noise.empty())
    XT_RETURN_IF_ERROR(bu.noise.Upload(b.noise.data(), T, s));
  LoraTerms lora(cfg_.lora, mm, bu.noise.get(), s);  // the dense MLPs' (attention's: its block)
  AttentionBlock attention(cfg_, mm, writes, b, bu.cos.get(), bu.sin.get(), bu.noise.get(),
                           bf16_attention, attention_kernels_, s);
  MoeBlock moe(cfg_, mm, writes, ep_, ep_ ? layout_.expert_count : E, rows16, T, s);
  XT_RETURN_IF_ERROR(mark("embedding"));
  XT_RETURN_IF_ERROR(bu.ids.Upload(b.ids.data(), T, s));
  bu.x.resize(L + 1);
  bu.layers.resize(L);
  for (F& x : bu.x) XT_RETURN_IF_ERROR(x.Alloc(T * H, s));
  {
    XT_ASSIGN_OR_RETURN(const UnitParams P, acquire(0, /*matmuls=*/false));
    XT_RETURN_IF_ERROR(EmbeddingForward(bu.x[0].get(), bu.ids.get(), P(layout_.embed), T, H, s));
    release(0);
  }

  LossInfo info;
  const int64_t n_moe = cfg_.num_moe_layers();
  if (n_moe > 0) {
    XT_RETURN_IF_ERROR(bu.count.Alloc(E, s));
    XT_RETURN_IF_ERROR(bu.prob_sum.Alloc(E, s));
    XT_RETURN_IF_ERROR(bu.count.Zero(s));
    XT_RETURN_IF_ERROR(bu.prob_sum.Zero(s));
  }

  // Every MoE layer's balancing statistics to the host (info.balance), queued once the last MoE
  // layer's are counted: that layer's wait for its token counts brings them, no wait of their own.
  auto queue_stats = [&]() -> Status {
    BalanceStats& stats = info.balance;
    stats.count.resize(E);
    stats.prob_sum.resize(E);
    stats.rows = n_moe * T;
    XT_RETURN_IF_ERROR(Check(cudaMemcpyAsync(stats.count.data(), bu.count.get(), E * 8,
                                             cudaMemcpyDeviceToHost, cudaStream_t(s)),
                             "balancing statistics"));
    return Check(cudaMemcpyAsync(stats.prob_sum.data(), bu.prob_sum.get(), E * 8,
                                 cudaMemcpyDeviceToHost, cudaStream_t(s)),
                 "balancing statistics");
  };

  // ---- forward. One layer: its activations into bu.layers[l], its output into bu.x[l + 1].
  // `recomputing`: again in the backward (the same inputs give the same activations and routing;
  // the statistics are not counted twice). P: the layer's unit, acquired.
  auto layer_forward = [&](int64_t l, const UnitParams& P, bool recomputing) -> Status {
    const LayerOffsets& o = layout_.layers[l];
    Buffers::Layer& a = bu.layers[l];
    const float* x_in = bu.x[l].get();
    float* x_out = bu.x[l + 1].get();
    // A recomputed layer is one phase; the first pass marks each of its parts.
    XT_RETURN_IF_ERROR(mark(recomputing ? "recompute" : "norm"));
    auto part = [&](const char* phase) { return recomputing ? Status::OK() : mark(phase); };
    XT_RETURN_IF_ERROR(a.rstd1.Alloc(T, s));
    if (bf16) {
      XT_RETURN_IF_ERROR(a.h1_16.Alloc(T * H, s));
      XT_RETURN_IF_ERROR(
          RmsnormForward(a.h1_16.get(), a.rstd1.get(), x_in, P(o.ln1), T, H, eps, s));
    } else {
      XT_RETURN_IF_ERROR(a.h1.Alloc(T * H, s));
      XT_RETURN_IF_ERROR(RmsnormForward(a.h1.get(), a.rstd1.get(), x_in, P(o.ln1), T, H, eps, s));
    }
    XT_RETURN_IF_ERROR(
        attention.Forward(&a.att, &a.x_mid, a.h1.get(), a.h1_16.get(), P, l, o, part));
    XT_RETURN_IF_ERROR(AddInPlace(a.x_mid.get(), x_in, T * H, s));
    XT_RETURN_IF_ERROR(part("norm"));
    XT_RETURN_IF_ERROR(a.rstd2.Alloc(T, s));
    // A dense layer's MLP in bf16 mode: its input h2 and SwiGLU's output feed only bf16
    // products (held in bf16, h2_16 and act16); SwiGLU's input is kept in bf16 for the backward.
    const bool dense16 = bf16 && o.router < 0;
    if (dense16) {
      XT_RETURN_IF_ERROR(a.h2_16.Alloc(T * H, s));
      XT_RETURN_IF_ERROR(
          RmsnormForward(a.h2_16.get(), a.rstd2.get(), a.x_mid.get(), P(o.ln2), T, H, eps, s));
    } else {
      XT_RETURN_IF_ERROR(a.h2.Alloc(T * H, s));
      XT_RETURN_IF_ERROR(
          RmsnormForward(a.h2.get(), a.rstd2.get(), a.x_mid.get(), P(o.ln2), T, H, eps, s));
    }
    if (o.router < 0) {  // dense SwiGLU MLP
      const int64_t Im = cfg_.intermediate_size;
      XT_RETURN_IF_ERROR(part("dense_mlp"));
      XT_RETURN_IF_ERROR(a.gu.Alloc(T * 2 * Im, s));
      XT_RETURN_IF_ERROR(dense16 ? a.act16.Alloc(T * Im, s) : a.act.Alloc(T * Im, s));
      XT_RETURN_IF_ERROR(
          mm.Linear(a.gu.get(), a.h2.get(), P(o.gate_up), T, H, 2 * Im, false, a.h2_16.get()));
      XT_RETURN_IF_ERROR(
          lora.Forward(a.gu.get(), a.h2.get(), a.h2_16.get(), P, o, o.gate_up, T, H, 2 * Im));
      if (dense16) {  // into act16; SwiGLU's input kept for the backward in bf16 (gu16)
        XT_RETURN_IF_ERROR(a.gu16.Alloc(T * 2 * Im, s));
        XT_RETURN_IF_ERROR(SwigluForward(a.act16.get(), a.gu16.get(), a.gu.get(), T, Im, s));
        a.gu = F();
      } else {
        XT_RETURN_IF_ERROR(SwigluForward(a.act.get(), a.gu.get(), T, Im, s));
      }
      XT_RETURN_IF_ERROR(mm.Linear(x_out, a.act.get(), P(o.down), T, Im, H, false, a.act16.get()));
      XT_RETURN_IF_ERROR(lora.Forward(x_out, a.act.get(), a.act16.get(), P, o, o.down, T, Im, H));
    } else {  // dropless MoE: router in fp32, top-k, plan on the host, grouped experts
      // The balancing statistics counted once (not again in a recomputed layer); the last MoE
      // layer queues their copies to the host right before its wait, which brings them.
      std::vector<int64_t> per_expert;
      const bool last = l == cfg_.last_moe_layer();
      XT_RETURN_IF_ERROR(moe.Forward(&a.moe, x_out, a.h2.get(), P, o,
                                     recomputing ? nullptr : bu.count.get(),
                                     recomputing ? nullptr : bu.prob_sum.get(),
                                     !recomputing && last ? queue_stats : std::function<Status()>(),
                                     recomputing ? nullptr : &per_expert, part));
      if (!recomputing) info.tokens_per_expert.push_back(std::move(per_expert));
    }
    XT_RETURN_IF_ERROR(AddInPlace(x_out, a.x_mid.get(), T * H, s));
    return Status::OK();
  };
  if (router_only) {  // RouterStats: the layers up to the last MoE one, nothing kept
    for (int64_t l = 0; l <= cfg_.last_moe_layer(); ++l) {
      XT_ASSIGN_OR_RETURN(const UnitParams P, acquire(ParamLayout::LayerUnit(l)));
      XT_RETURN_IF_ERROR(layer_forward(l, P, false));
      release(ParamLayout::LayerUnit(l));
      bu.layers[l] = Buffers::Layer();
      bu.x[l] = F();
    }
    return info;  // the statistics came with the last MoE layer's token counts
  }
  int64_t recomputed_peak = 0;  // the largest recomputed layer's activations
  for (int64_t l = 0; l < L; ++l) {
    XT_RETURN_IF_ERROR(mark("weights"));  // gathered (ZeRO-3), rounded to bf16 (bf16 mode)
    XT_ASSIGN_OR_RETURN(const UnitParams P, acquire(ParamLayout::LayerUnit(l)));
    XT_RETURN_IF_ERROR(layer_forward(l, P, false));
    release(ParamLayout::LayerUnit(l));
    // Recomputed layers keep only their input (bu.x[l]) until the backward.
    if (l < recompute_layers_) {
      recomputed_peak = std::max(recomputed_peak, bu.layers[l].Bytes());
      bu.layers[l] = Buffers::Layer();
    }
  }
  // What the backward starts from (as the CPU's LossInfo::activation_bytes: the kept layers and
  // inputs, plus one recomputed layer's activations while it is differentiated).
  info.activation_bytes = recomputed_peak;
  for (const F& x : bu.x) info.activation_bytes += x.size() * int64_t(sizeof(float));
  for (const Buffers::Layer& a : bu.layers) info.activation_bytes += a.Bytes();

  // ---- head: final norm, lm_head + cross-entropy (chunked), forward and backward. The lm_head
  // is in the embedding's unit when tied; its gradient stays open until the embedding's backward.
  XT_RETURN_IF_ERROR(mark("weights"));
  XT_ASSIGN_OR_RETURN(const UnitParams P, acquire(head));
  UnitParams P_lm = P;
  if (tied) {
    XT_ASSIGN_OR_RETURN(P_lm, acquire(0));
  }
  XT_RETURN_IF_ERROR(mark("lm_head_and_loss"));  // with the final norm and the balancing loss
  const UnitGrads G = grads(head);
  const UnitGrads G_lm = tied ? grads(0) : G;
  XT_RETURN_IF_ERROR(bu.h_final.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(bu.rstd_final.Alloc(T, s));
  XT_RETURN_IF_ERROR(RmsnormForward(bu.h_final.get(), bu.rstd_final.get(), bu.x[L].get(),
                                    P(layout_.final_norm), T, H, eps, s));
  info.num_loss_tokens = b.num_loss_tokens();
  if (ce_weight <= 0) ce_weight = info.num_loss_tokens > 0 ? 1.0 / double(info.num_loss_tokens) : 0;
  if (aux_weight < 0) aux_weight = 1.0;
  F dh, dx;
  XT_RETURN_IF_ERROR(dh.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(dx.Alloc(T * H, s));
  // The loss's sum stays on the device until the step's end: no host wait for it here.
  DeviceArray<double> ce_sum;
  XT_RETURN_IF_ERROR(ce_sum.Alloc(1, s));
  XT_RETURN_IF_ERROR(ChunkedCrossEntropyQueued(
      ce_sum.get(), blas, dh.get(), G_lm(layout_.lm_head), bu.h_final.get(), P_lm(layout_.lm_head),
      b.targets.data(), T, H, V, ce_weight, loss_chunk_rows_, s, precision_,
      bf16 ? units16.Find(P_lm(layout_.lm_head)) : nullptr,
      writes.Beta(G_lm(layout_.lm_head), V * H)));

  // The balancing loss (as Transformer::Run): statistics to the host, loss and its gradient per
  // probability, centred. The softmax routers' only: DeepSeek-V3's bias balances its load, so
  // its statistics only count the choices.
  const bool balance_loss = n_moe > 0 && cfg_.router == RouterKind::kSoftmax;
  std::vector<double> dprob_e(E, 0.0);
  if (balance_loss) {  // the statistics came with the last MoE layer's token counts
    const BalanceStats& stats = info.balance;
    info.aux_loss = stats.Loss();
    const BalanceStats pooled = pool ? pool(stats) : stats;
    if (int64_t(pooled.count.size()) != E || int64_t(pooled.prob_sum.size()) != E)
      return Status::Error("balance pool returned statistics of a different expert count");
    dprob_e = BalanceGradient(pooled, E, cfg_.router_aux_loss_coef, aux_weight);
  }

  const bool aux_grad = balance_loss && cfg_.router_aux_loss_coef * aux_weight != 0;
  F dprob_row;
  if (aux_grad) {
    std::vector<float> row(E);
    for (int64_t e = 0; e < E; ++e) row[e] = float(dprob_e[e]);
    XT_RETURN_IF_ERROR(dprob_row.Upload(row.data(), E, s));
  }

  XT_RETURN_IF_ERROR(writes.Prepare(G(layout_.final_norm), H, s));
  XT_RETURN_IF_ERROR(RmsnormBackward(dx.get(), G(layout_.final_norm), dh.get(), bu.x[L].get(),
                                     P(layout_.final_norm), bu.rstd_final.get(), T, H, false, s));
  bu.h_final = F();  // the head's buffers are done: (T, H) twice less through the backward
  bu.rstd_final = F();
  dh = F();
  release(head);
  if (tied) release(0);
  XT_RETURN_IF_ERROR(grads_done(head));

  // ---- backward, top layer first; dx: d loss / d layer output, then / d layer input.
  // Scratch of the same size in every layer, allocated once; the experts' (the largest: A = T k
  // rows each) per layer, freed with the activations they consume as soon as they are used.
  F dh2, dh1;
  F dense_dact, dense_dgu;
  DeviceArray<uint16_t> dense_dgu16;  // bf16 mode: the dense MLP's dgu, which feeds bf16 products
  XT_RETURN_IF_ERROR(dh2.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(dh1.Alloc(T * H, s));
  XT_RETURN_IF_ERROR(attention.AllocGrads());
  if (n_moe < L) {
    XT_RETURN_IF_ERROR(dense_dact.Alloc(T * cfg_.intermediate_size, s));
    XT_RETURN_IF_ERROR(bf16 ? dense_dgu16.Alloc(T * 2 * cfg_.intermediate_size, s)
                            : dense_dgu.Alloc(T * 2 * cfg_.intermediate_size, s));
  }
  if (n_moe > 0) XT_RETURN_IF_ERROR(moe.AllocGrads(aux_grad ? dprob_row.get() : nullptr));
  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerOffsets& o = layout_.layers[l];
    const int64_t u = ParamLayout::LayerUnit(l);
    XT_RETURN_IF_ERROR(mark("weights"));
    XT_ASSIGN_OR_RETURN(const UnitParams P, acquire(u));
    const UnitGrads G = grads(u);
    if (l < recompute_layers_) XT_RETURN_IF_ERROR(layer_forward(l, P, true));
    Buffers::Layer& a = bu.layers[l];
    if (o.router < 0) {
      const int64_t Im = cfg_.intermediate_size;
      XT_RETURN_IF_ERROR(mark("dense_mlp_bwd"));
      XT_RETURN_IF_ERROR(mm.LinearBackward(dense_dact.get(), G(o.down), dx.get(), a.act.get(),
                                           P(o.down), T, Im, H, false, false, a.act16.get()));
      XT_RETURN_IF_ERROR(lora.Backward(dense_dact.get(), dx.get(), nullptr, a.act.get(),
                                       a.act16.get(), P, G, o, o.down, T, Im, H));
      if (bf16) {
        XT_RETURN_IF_ERROR(
            SwigluBackward(dense_dgu16.get(), dense_dact.get(), a.gu16.get(), T, Im, s));
      } else {
        XT_RETURN_IF_ERROR(SwigluBackward(dense_dgu.get(), dense_dact.get(), a.gu.get(), T, Im, s));
      }
      XT_RETURN_IF_ERROR(mm.LinearBackward(dh2.get(), G(o.gate_up), dense_dgu.get(), a.h2.get(),
                                           P(o.gate_up), T, H, 2 * Im, false, false, a.h2_16.get(),
                                           dense_dgu16.get()));
      XT_RETURN_IF_ERROR(lora.Backward(dh2.get(), dense_dgu.get(), dense_dgu16.get(), a.h2.get(),
                                       a.h2_16.get(), P, G, o, o.gate_up, T, H, 2 * Im));
    } else {
      XT_RETURN_IF_ERROR(moe.Backward(&dh2, dx.get(), &a.moe, a.h2.get(), P, G, o, mark));
    }
    // dx = d x_mid (the residual plus the norm's backward).
    XT_RETURN_IF_ERROR(mark("norm_bwd"));
    XT_RETURN_IF_ERROR(writes.Prepare(G(o.ln2), H, s));
    XT_RETURN_IF_ERROR(RmsnormBackward(dx.get(), G(o.ln2), dh2.get(), a.x_mid.get(), P(o.ln2),
                                       a.rstd2.get(), T, H, true, s));
    XT_RETURN_IF_ERROR(attention.Backward(dh1.get(), dx.get(), a.att, a.h1.get(), a.h1_16.get(), P,
                                          G, l, o, mark));
    XT_RETURN_IF_ERROR(mark("norm_bwd"));
    XT_RETURN_IF_ERROR(writes.Prepare(G(o.ln1), H, s));
    XT_RETURN_IF_ERROR(RmsnormBackward(dx.get(), G(o.ln1), dh1.get(), bu.x[l].get(), P(o.ln1),
                                       a.rstd1.get(), T, H, true, s));
    XT_RETURN_IF_ERROR(mark("grads_reduce"));  // ZeRO-3's reduce-scatter, if any
    release(u);
    XT_RETURN_IF_ERROR(grads_done(u));
    bu.layers[l] = Buffers::Layer();  // free as we go
  }
  XT_RETURN_IF_ERROR(mark("embedding_bwd"));
  const UnitGrads G_embed = grads(0);
  if (float* d_embed = G_embed(layout_.embed)) {  // (frozen in a LoRA run)
    XT_RETURN_IF_ERROR(writes.Prepare(d_embed, V * H, s));
    XT_RETURN_IF_ERROR(EmbeddingBackward(d_embed, dx.get(), bu.ids.get(), T, V, H, s));
  }
  XT_RETURN_IF_ERROR(grads_done(0));
  if (prof) XT_RETURN_IF_ERROR(prof->Finish(s));
  double ce = 0;  // the loss's sum, with the step's one wait at its end
  XT_RETURN_IF_ERROR(Check(
      cudaMemcpyAsync(&ce, ce_sum.get(), sizeof(double), cudaMemcpyDeviceToHost, cudaStream_t(s)),
      "the loss"));
  XT_RETURN_IF_ERROR(Check(cudaStreamSynchronize(cudaStream_t(s)), "training step"));
  info.ce_loss = info.num_loss_tokens > 0 ? ce / double(info.num_loss_tokens) : 0;
  info.loss = info.ce_loss + cfg_.router_aux_loss_coef * info.aux_loss;
  return info;
}

}  // namespace xt::cuda
