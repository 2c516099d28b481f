// AdamW over the fp32 parameter slab, exactly as torch.optim.AdamW (decoupled weight decay,
// bias correction, eps added after the bias-corrected square root). Per element, at step t
// (1-based, counted by the optimizer) with learning rate lr:
//   p   *= 1 - lr * weight_decay                    (only where decay is enabled, and wd != 0)
//   m    = lerp(m, g, 1 - beta1)                    (= beta1 m + (1 - beta1) g)
//   v    = beta2 v + (1 - beta2) g^2
//   p   -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Scalars are formed in double and rounded to float where torch rounds them (its Python floats
// become float32 kernel scalars), so the results match torch's CPU single-tensor path to about
// one ulp per step.
//
// Parameter groups are ranges of the slab: each element belongs to exactly one DecayRange,
// which says whether weight decay applies to it (torch: one param group with weight_decay, one
// with 0). DefaultDecayRanges() gives the usual choice (HF Trainer's): no decay on norm weights
// and biases.
//
// Sharding (ZeRO): an AdamW may own only the shard [shard_begin, shard_end) of the slab; its
// state then covers that shard alone, and Step() takes pointers to the shard's first element.
// Elementwise, so sharded and unsharded runs give bit-identical parameters, for any thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/core/tensor.h"
#include "xtuner/model/params.h"

namespace xt {

// The hyper-parameters (torch.optim.AdamW's defaults). The learning rate is not here: it comes
// from the schedule at every step (see lr_schedule.h).
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // applied only to ranges with weight_decay = true
};

// OK, or an error naming the bad field: betas in [0, 1), eps >= 0, weight_decay >= 0, all finite.
Status ValidateAdamWConfig(const AdamWConfig& cfg);

// Elements [offset, offset + numel) of the slab, and whether weight decay applies to them.
// Frozen elements (a LoRA run's base weights) are not updated at all, their moments untouched
// (torch: parameters without requires_grad are in no param group).
struct DecayRange {
  int64_t offset = 0;  // in floats
  int64_t numel = 0;
  bool weight_decay = true;
  bool frozen = false;
};

// One range per parameter of `layout`, decay disabled for norm weights (ParamInfo::is_norm),
// buffers (ParamInfo::no_grad: their zero gradient then leaves them as they are) and biases
// (hub names ending in ".bias"), frozen where ParamInfo::frozen, in slab order, adjacent ranges
// with the same flags merged. Covers [0, layout.total()) exactly.
std::vector<DecayRange> DefaultDecayRanges(const ParamLayout& layout);

// A maximal range of a shard with one decay flag; offsets local to the shard.
struct DecayRun {
  int64_t begin, end;
  bool decay;
  bool frozen = false;
};

// The runs of the shard [shard_begin, shard_end) of a slab of `total` elements under `ranges` (in
// any order), which must cover [0, total) exactly, without overlap: the order AdamW updates the
// shard in. Errors name the range that leaves the slab, overlaps, or the elements left out.
Result<std::vector<DecayRun>> DecayRuns(std::vector<DecayRange> ranges, int64_t total,
                                        int64_t shard_begin, int64_t shard_end);

class AdamW {
 public:
  // `ranges` (in any order) must cover [0, total) exactly, without overlap; the optimizer owns
  // the shard [shard_begin, shard_end) (shard_end = -1: total). State starts at zero, step 0.
  // Errors: bad config, ranges that leave a gap or overlap or leave [0, total), a bad shard.
  static Result<AdamW> Create(const AdamWConfig& cfg, std::vector<DecayRange> ranges, int64_t total,
                              int64_t shard_begin = 0, int64_t shard_end = -1);

  // One optimizer step: params (numel()) updated in place from grads (numel()), both the
  // shard's elements; lr >= 0 and finite (checked: a bad lr is a bug of the caller). Increments
  // step() first, as torch does. Non-finite gradients are not detected here: the caller skips
  // the step instead (see clip.h, non_finite_guard.h). The gradients are read times
  // `grad_scale` (>= 0; the clipping coefficient, without a pass of its own over them), and
  // left unchanged. OpenMP-parallel, elementwise, vectorized.
  void Step(float* params, const float* grads, double lr, float grad_scale = 1.0f);

  // Optimizer steps taken so far (torch's state["step"]). The lr of the next step is
  // schedule.lr(step()) when every step was taken.
  int64_t step() const { return step_; }
  const AdamWConfig& config() const { return cfg_; }
  int64_t numel() const { return shard_end_ - shard_begin_; }
  int64_t shard_begin() const { return shard_begin_; }
  int64_t shard_end() const { return shard_end_; }

  // The state, F32 [numel()], sharing storage with the optimizer (torch's exp_avg and
  // exp_avg_sq): a checkpoint saves these as they are. Writing through them changes the state.
  Tensor exp_avg() const { return m_; }
  Tensor exp_avg_sq() const { return v_; }

  // Replaces the state with copies of saved tensors (any shape with numel() elements, F32) and
  // the step counter. Errors name the tensor and the expected and found dtype/size; on error
  // the state is unchanged. Passing exp_avg() and exp_avg_sq() themselves sets only the step
  // counter (a device backend that wrote its moments into them).
  Status Restore(const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t step);

 private:
  AdamW() = default;

  AdamWConfig cfg_;
  std::vector<DecayRun> runs_;
  int64_t shard_begin_ = 0, shard_end_ = 0, step_ = 0;
  Tensor m_, v_;  // F32 [numel()]
};

}  // namespace xt
