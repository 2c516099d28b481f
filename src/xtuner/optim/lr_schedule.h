// Learning-rate schedules: a linear warm-up, then cosine decay, linear decay or a constant.
//
// Step convention (Hugging Face's get_*_schedule_with_warmup, i.e. torch LambdaLR): lr(s) is
// the learning rate of optimizer step s, counted from 0; HF's scheduler gives the same value
// (base_lr * lambda(s)) after s calls of scheduler.step(). With W warm-up steps, T total steps,
// r = min_lr / lr and start factor f:
//   s < W:   lr * (f + (1 - f) * s / max(1, W))       (f = 0: step 0 has lr 0, as in HF)
//   s >= W:  lr * (d * (1 - r) + r), with progress p = (min(s, T) - W) / max(1, T - W) and
//     cosine:   d = 0.5 * (1 + cos(pi * p))           (HF get_cosine_schedule_with_warmup; with
//                                                      min_lr: ..._with_min_lr_schedule_...)
//     linear:   d = max(0, 1 - p) = (T - s) / max(1, T - W)   (HF get_linear_schedule_with_warmup)
//     constant: d = 1 (min_lr unused)                 (HF get_constant_schedule_with_warmup)
// The formulas are HF's, evaluated in the same order in double, so the values agree to the last
// bit or so. One difference: past T, HF's cosine rises again (it is periodic); here every
// schedule holds its value at T (min_lr for cosine and linear).
#pragma once

#include <cstdint>
#include <string>

#include "xtuner/core/status.h"

namespace xt {

enum class LrScheduleType { kCosine, kLinear, kConstant };

// "cosine", "linear" or "constant"; anything else is an error listing those.
Result<LrScheduleType> ParseLrScheduleType(const std::string& name);
const char* LrScheduleTypeName(LrScheduleType type);

struct LrScheduleConfig {
  LrScheduleType type = LrScheduleType::kCosine;
  double lr = 1e-3;         // the peak (base) learning rate, >= 0
  double min_lr = 0.0;      // reached at total_steps by cosine and linear; in [0, lr]
  int64_t total_steps = 0;  // optimizer steps in the whole run, >= 1
  // Warm-up length: warmup_steps, or, when that is 0, ceil(warmup_ratio * total_steps) as HF's
  // TrainingArguments.get_warmup_steps computes it (in double: ceil(0.07 * 100) is 8). Setting
  // both is an error.
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;         // in [0, 1]
  double warmup_start_factor = 0.0;  // warm-up starts at this fraction of lr; in [0, 1]
};

// A validated schedule; lr(step) is a pure function of the config. Cheap to copy.
class LrSchedule {
 public:
  // Errors (each names the field and its value): lr or min_lr negative or not finite,
  // min_lr > lr, total_steps < 1, warmup_steps < 0 or > total_steps, warmup_ratio outside
  // [0, 1], both warmup_steps and warmup_ratio set, warmup_start_factor outside [0, 1].
  static Result<LrSchedule> Create(const LrScheduleConfig& cfg);

  // The learning rate of optimizer step `step` (0-based, >= 0; checked).
  double lr(int64_t step) const;

  int64_t warmup_steps() const { return warmup_steps_; }  // resolved from the ratio if needed
  const LrScheduleConfig& config() const { return cfg_; }

 private:
  LrScheduleConfig cfg_;
  int64_t warmup_steps_ = 0;
};

}  // namespace xt
