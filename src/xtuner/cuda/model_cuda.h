// CudaModel: the decoder-only models of model/transformer.h (Qwen3, Qwen3-MoE, Mixtral,
// DeepSeek-V3, GPT-OSS), one training micro-batch (forward + backward) on one GPU
// in fp32, over the CUDA ops. It is the GPU twin of Transformer::ForwardBackward: the same
// parameter layout (ParamLayout, so slabs copy across), the same loss weighting, the same balancing
// loss; its test compares losses and every gradient with the CPU model on the HF fixtures.
//
// Two ways to hold the parameters: the model's own whole slabs on one GPU (Create), or a
// ParamSource that serves them one unit at a time (CreateOver: ZeRO-3, a device ShardedParams
// over NCCL gathering each unit before its use and reduce-scattering its gradients after its
// backward, as the CPU Transformer does over MPI), optionally with expert parallelism (the
// layer's rows travel to the ranks that hold their experts over an NcclComm and back). fp32 or
// bf16 matmuls, per-layer recompute, the router-only pass of a global balancing loss, no
// generation. Host waits per step: one per MoE layer (its token counts per expert, for the
// grouped GEMMs' shapes and the expert exchange; again for a recomputed one; the last one's
// also brings the balancing statistics) and one at the step's end (the loss is read there).
// Unverified on a GPU so far (none lent).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/bf16_copies.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/cuda/step_profile.h"
#include "xtuner/model/batch.h"
#include "xtuner/model/config.h"
#include "xtuner/model/param_source.h"
#include "xtuner/model/params.h"
#include "xtuner/model/transformer.h"

namespace xt {
class Comm;
}

namespace xt::cuda {

class CudaModel {
 public:
  // A model on the current device with the parameters `host_params` (ParamLayout(cfg).total()
  // floats, e.g. a loaded Transformer's params(); null: zeros, to be written through params());
  // gradients zero. Queues its work on `stream`
  // (a cudaStream_t; null: the default stream).
  static Result<std::unique_ptr<CudaModel>> Create(const ModelConfig& cfg, const float* host_params,
                                                   void* stream = nullptr);
  // A model whose parameters and gradients are DEVICE memory served by `source` one unit at a
  // time, addressed by ParamLayout(cfg, expert_begin, expert_count) (a device ShardedParams over
  // NCCL, cuda/shard_memory_cuda.h; its collectives and memory must be queued on `stream`).
  // With expert parallelism (expert_count < the model's experts), `ep` is the expert-parallel
  // group, an NcclComm on the same stream over the ranks that hold the other experts (rank p of
  // it holds experts [p * expert_count, (p + 1) * expert_count)); null otherwise. `source` and
  // `ep` outlive the model; its whole-slab accessors (params(), grads(), ZeroGrads, Copy*ToHost)
  // are then not available: the source holds the gradients.
  static Result<std::unique_ptr<CudaModel>> CreateOver(const ModelConfig& cfg, ParamSource* source,
                                                       void* stream, int64_t expert_begin = 0,
                                                       int64_t expert_count = -1,
                                                       Comm* ep = nullptr);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return cfg_; }
  // The matmuls' inputs: fp32 (default) or bf16 (rounded, fp32 sums: the CPU model's
  // MatmulPrecision::kBf16; the router stays fp32). Weights and gradients stay fp32, and so do
  // the activations but those that feed only bf16 products (kept as those products round them).
  // The lm_head's products inside the chunked cross-entropy follow the same precision, and so
  // does attention where the bf16 kernels take the head dim (AttentionBf16Supports: a multiple
  // of 16 up to 128): Q, K, V, the softmax weights and the output gradient rounded to bf16 for
  // the tensor cores (Q, K, V and the output kept in bf16). The CPU's bf16 mode keeps attention
  // in fp32.
  void SetPrecision(GemmInput p) { precision_ = p; }
  // In bf16 mode, attention on the tensor cores (default) or on the fp32 kernels (false: e.g.
  // to measure the rest of the model should the bf16 kernels fail their tests on some GPU).
  void SetBf16Attention(bool on) { bf16_attention_ = on; }
  // Which bf16 attention kernels (attention_bf16.h; default kWmma).
  void SetAttentionBf16Kernels(AttentionBf16Kernels kernels) { attention_kernels_ = kernels; }
  // Per-layer recompute, as Transformer::SetRecompute: the first round(fraction * layers) layers
  // keep only their input in the forward and run again in the backward (same gradients).
  void SetRecompute(double fraction);
  int64_t recompute_layers() const { return recompute_layers_; }
  // Times the phases of every ForwardBackward into `profile` (cuda/step_profile.h; null: off, the
  // default). Each step then ends with a wait for the stream. Recomputed layers' forwards count
  // as one phase, "recompute".
  void SetProfile(StepProfile* profile) { profile_ = profile; }
  // Loss rows per chunk of the fused lm_head + cross-entropy (cuda/loss_cuda.h; <= 0: the
  // default, DefaultLossChunkRows(V, true), about 256 Mi logits). Larger chunks give the
  // lm_head's GEMMs more rows for (chunk, V) floats of scratch; the loss and gradients change
  // only by summation order.
  void SetLossChunkRows(int64_t rows) { loss_chunk_rows_ = rows; }
  const ParamLayout& layout() const { return layout_; }
  // The GEMMs (for reports: e.g. whether the experts' products are grouped natively).
  const Blas& blas() const { return *blas_; }
  // How the experts' products run (Blas::ExpertsPath; default: cuBLAS's grouped GEMM first).
  void SetExpertsPath(GemmInput in, Blas::ExpertsPath path) { blas_->SetExpertsPath(in, path); }
  // The source's parameters changed (an optimizer step): the bf16 copies of the units it holds
  // (ParamSource::Held) are made again at their next use. Gathered units' copies are made at
  // every use anyway. mirror_written: the optimizer also wrote every element bf16_mirror()
  // covers (AdamWStepRange), so those copies are current and need not be made again.
  void ParamsChanged(bool mirror_written = false);
  // bf16 mode, where the source holds every unit whose weights enter matmuls (Create's model,
  // or one rank's ShardedParams): the bf16 copy of the parameters [begin, total) (layout
  // offsets; begin skips an untied input embedding), for an optimizer to write beside them in
  // the same pass (AdamWStepRange: the next step need not read the fp32 weights again to round
  // them, 4 bytes a parameter of traffic saved per step). Empty (null data) before the first
  // bf16 step, in fp32 mode, and over a source that gathers. A weight's bf16 copy is as aligned
  // as its fp32 offset in the slab (16 bytes, which xtuner's grouped kernel needs, where the
  // offsets are multiples of 8, as in real models; otherwise the experts' products go one per
  // expert).
  Bf16Mirror bf16_mirror() const;
  // bf16 mode over a source that holds every unit (one GPU): the parameters in `ranges` (slab
  // offsets: plan/frozen_bf16.h's Bf16OnlyRanges, frozen weights that enter matmuls only) are
  // held in bf16 only. Their copies are rounded now from `host` (the slab's fp32 parameters on
  // the host, layout().total() floats), staged through the device 64 MiB at a time, and kept;
  // the source's fp32 parameters there are never read (they may hold no memory).
  Status HoldInBf16Only(SlabRanges ranges, const float* host);
  // Device slabs (layout().total() floats each), Create's model only.
  // The writable slab: a call marks the bf16 copy of the weights (bf16 mode) stale, so the next
  // ForwardBackward makes it again (once per optimizer step, not per micro-batch).
  float* params();
  // The slab, to read (e.g. to copy out): the bf16 copy stays valid.
  const float* params_view() const { return Slab(params_); }
  // The gradients' slab (zeroing first what ZeroGrads left blank and no step has written). With
  // LoRA the frozen weights' part is the zeros Create made, and nothing writes it: a caller must
  // not either (ZeroGrads clears what trains only).
  float* grads();
  // Sets the gradients to zero, lazily: the next ForwardBackward writes them instead of adding
  // into them (ParamSource::GradsToWrite), which spares a zeroing pass over the slab and the
  // first read of every gradient its products write.
  Status ZeroGrads();
  // Copies a slab to the host (layout().total() floats); waits for the stream.
  Status CopyParamsToHost(float* out) const;
  Status CopyGradsToHost(float* out) const;

  // As Transformer::ForwardBackward: gradients ACCUMULATE into grads(); ce_weight (<= 0: 1 /
  // this batch's loss tokens), aux_weight (< 0: 1), pool (the balancing statistics the backward
  // follows; empty: this batch's own). Errors on invalid input or a CUDA failure. Over an
  // external source (CreateOver), a failure after the step began (e.g. out of memory) leaves the
  // source in the middle of a step: every later call is then an error naming the first.
  Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight = -1,
                                   double aux_weight = -1, const BalancePool& pool = {});
  // As Transformer::RouterStats: the balancing statistics of a batch from the forward of the
  // decoder layers up to the last MoE layer, nothing kept (empty for a dense model).
  Result<BalanceStats> RouterStats(const Batch& batch);

 private:
  struct Buffers;
  class LocalSource;
  CudaModel(const ModelConfig& cfg, int64_t expert_begin, int64_t expert_count);
  float* Slab(float* p) const;
  // Sets the parameter source (once, at creation), and whether the bf16 copies can be a mirror.
  void SetSource(ParamSource* source);
  // The pool's settings, the GEMMs (shared by both constructors).
  Status Init(void* stream);
  // Run, refusing to run again over an external source after a step that failed midway.
  Result<LossInfo> Guarded(const Batch& b, double ce_weight, double aux_weight,
                           const BalancePool& pool, bool router_only);
  // router_only: RouterStats (the forward up to the last MoE layer, the statistics only).
  Result<LossInfo> Run(const Batch& b, double ce_weight, double aux_weight, const BalancePool& pool,
                       bool router_only);

  ModelConfig cfg_;
  ParamLayout layout_;
  void* stream_ = nullptr;
  std::unique_ptr<Blas> blas_;
  float* params_ = nullptr;  // Create's whole slabs (null under CreateOver)
  float* grads_ = nullptr;
  std::unique_ptr<LocalSource> local_;  // serves Create's slabs as units
  ParamSource* source_ = nullptr;
  Comm* ep_ = nullptr;  // expert parallelism's group (device collectives), or null
  GemmInput precision_ = GemmInput::kF32;
  int64_t recompute_layers_ = 0;
  std::unique_ptr<Bf16Copies> bf16_copies_;  // bf16 copies of the units in use (bf16 mode)
  std::string failed_;  // CreateOver's model: the error that stopped a step midway
  bool bf16_attention_ = true;
  AttentionBf16Kernels attention_kernels_ = AttentionBf16Kernels::kWmma;
  StepProfile* profile_ = nullptr;
  int64_t loss_chunk_rows_ = 0;
};

}  // namespace xt::cuda
