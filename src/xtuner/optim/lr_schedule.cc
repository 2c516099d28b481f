#include "xtuner/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>

#include "xtuner/core/format.h"

namespace xt {
namespace {

Status Bad(const std::string& what) { return Status::Error("lr schedule: " + what); }

}  // namespace

Result<LrScheduleType> ParseLrScheduleType(const std::string& name) {
  for (auto t : {LrScheduleType::kCosine, LrScheduleType::kLinear, LrScheduleType::kConstant})
    if (name == LrScheduleTypeName(t)) return t;
  return Bad("unknown type '" + name + "' (supported: cosine, linear, constant)");
}

const char* LrScheduleTypeName(LrScheduleType type) {
  switch (type) {
    case LrScheduleType::kCosine:
      return "cosine";
    case LrScheduleType::kLinear:
      return "linear";
    case LrScheduleType::kConstant:
      return "constant";
  }
  return "?";
}

Result<LrSchedule> LrSchedule::Create(const LrScheduleConfig& c) {
  if (!(c.lr >= 0 && std::isfinite(c.lr))) return Bad("lr = " + FormatG(c.lr) + " must be >= 0");
  if (!(c.min_lr >= 0 && std::isfinite(c.min_lr)))
    return Bad("min_lr = " + FormatG(c.min_lr) + " must be >= 0");
  if (c.min_lr > c.lr)
    return Bad("min_lr = " + FormatG(c.min_lr) + " is larger than lr = " + FormatG(c.lr));
  if (c.total_steps < 1)
    return Bad("total_steps = " + std::to_string(c.total_steps) + " must be >= 1");
  if (c.warmup_steps < 0)
    return Bad("warmup_steps = " + std::to_string(c.warmup_steps) + " must be >= 0");
  if (!(c.warmup_ratio >= 0 && c.warmup_ratio <= 1))
    return Bad("warmup_ratio = " + FormatG(c.warmup_ratio) + " must be in [0, 1]");
  if (c.warmup_steps > 0 && c.warmup_ratio > 0)
    return Bad("set warmup_steps (" + std::to_string(c.warmup_steps) + ") or warmup_ratio (" +
               FormatG(c.warmup_ratio) + "), not both");
  if (!(c.warmup_start_factor >= 0 && c.warmup_start_factor <= 1))
    return Bad("warmup_start_factor = " + FormatG(c.warmup_start_factor) + " must be in [0, 1]");
  LrSchedule s;
  s.cfg_ = c;
  s.warmup_steps_ = c.warmup_steps > 0 ? c.warmup_steps
                                       : int64_t(std::ceil(double(c.total_steps) * c.warmup_ratio));
  if (s.warmup_steps_ > c.total_steps)
    return Bad("warmup_steps = " + std::to_string(s.warmup_steps_) +
               " is more than total_steps = " + std::to_string(c.total_steps));
  return s;
}

double LrSchedule::lr(int64_t step) const {
  XT_CHECK(step >= 0, "LrSchedule::lr: step = " + std::to_string(step));
  const int64_t W = warmup_steps_, T = cfg_.total_steps;
  if (step < W) {
    const double f = cfg_.warmup_start_factor;
    return cfg_.lr * (f + (1 - f) * (double(step) / double(std::max<int64_t>(1, W))));
  }
  const int64_t s = std::min(step, T);
  double d = 1.0;
  if (cfg_.type == LrScheduleType::kConstant) return cfg_.lr;
  if (cfg_.type == LrScheduleType::kCosine) {
    const double progress = double(s - W) / double(std::max<int64_t>(1, T - W));
    d = std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
  } else {
    d = std::max(0.0, double(T - s) / double(std::max<int64_t>(1, T - W)));
  }
  // HF's get_cosine_with_min_lr_schedule_with_warmup: factor * (1 - rate) + rate, rate = min/lr.
  const double rate = cfg_.lr > 0 ? cfg_.min_lr / cfg_.lr : 0.0;
  return cfg_.lr * std::max(0.0, d * (1 - rate) + rate);
}

}  // namespace xt
