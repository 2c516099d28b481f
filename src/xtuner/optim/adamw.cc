#include "xtuner/optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "xtuner/core/format.h"
#include "xtuner/core/zero_pages.h"
#include "xtuner/optim/adamw_scalars.h"

namespace xt {
namespace {

std::string RangeString(const DecayRange& r) {
  char buf[64];  // (not "[" + std::to_string(...): g++ 12 warns falsely on it, PR 105329)
  std::snprintf(buf, sizeof(buf), "[%lld, %lld)", (long long)r.offset,
                (long long)(r.offset + r.numel));
  return buf;
}

}  // namespace

Status ValidateAdamWConfig(const AdamWConfig& c) {
  auto bad = [](const char* field, double v, const char* want) {
    return Status::Error(std::string("AdamW: ") + field + " = " + FormatG(v) + ", expected " +
                         want);
  };
  if (!(c.beta1 >= 0 && c.beta1 < 1)) return bad("beta1", c.beta1, "a value in [0, 1)");
  if (!(c.beta2 >= 0 && c.beta2 < 1)) return bad("beta2", c.beta2, "a value in [0, 1)");
  if (!(c.eps >= 0 && std::isfinite(c.eps))) return bad("eps", c.eps, "a finite value >= 0");
  if (!(c.weight_decay >= 0 && std::isfinite(c.weight_decay)))
    return bad("weight_decay", c.weight_decay, "a finite value >= 0");
  return Status::OK();
}

std::vector<DecayRange> DefaultDecayRanges(const ParamLayout& layout) {
  std::vector<DecayRange> out;
  for (const ParamInfo& p : layout.params()) {
    DecayRange r{p.offset, NumElements(p.shape),
                 !(p.is_norm || p.is_bias || p.no_grad || p.name.ends_with(".bias")), p.frozen};
    if (!out.empty() && out.back().weight_decay == r.weight_decay &&
        out.back().frozen == r.frozen && out.back().offset + out.back().numel == r.offset) {
      out.back().numel += r.numel;
    } else {
      out.push_back(r);
    }
  }
  return out;
}

Result<std::vector<DecayRun>> DecayRuns(std::vector<DecayRange> ranges, int64_t total,
                                        int64_t shard_begin, int64_t shard_end) {
  std::sort(ranges.begin(), ranges.end(),
            [](const DecayRange& a, const DecayRange& b) { return a.offset < b.offset; });
  std::vector<DecayRun> runs;
  int64_t next = 0;  // first element not yet covered
  for (const DecayRange& r : ranges) {
    if (r.numel < 0 || r.offset < 0 || r.offset + r.numel > total)
      return Status::Error("AdamW: decay range " + RangeString(r) + " is not inside the slab [0, " +
                           std::to_string(total) + ")");
    if (r.offset < next)
      return Status::Error("AdamW: decay range " + RangeString(r) + " overlaps another range");
    if (r.offset > next)
      return Status::Error("AdamW: elements [" + std::to_string(next) + ", " +
                           std::to_string(r.offset) + ") are in no decay range");
    next = r.offset + r.numel;
    // Clip to the shard, make local, merge with the previous run when the flag agrees.
    const int64_t b = std::max(r.offset, shard_begin) - shard_begin;
    const int64_t e = std::min(r.offset + r.numel, shard_end) - shard_begin;
    if (b >= e) continue;
    if (!runs.empty() && runs.back().decay == r.weight_decay && runs.back().frozen == r.frozen &&
        runs.back().end == b)
      runs.back().end = e;
    else
      runs.push_back({b, e, r.weight_decay, r.frozen});
  }
  if (next != total)
    return Status::Error("AdamW: elements [" + std::to_string(next) + ", " + std::to_string(total) +
                         ") are in no decay range");
  return runs;
}

Result<AdamW> AdamW::Create(const AdamWConfig& cfg, std::vector<DecayRange> ranges, int64_t total,
                            int64_t shard_begin, int64_t shard_end) {
  XT_RETURN_IF_ERROR(ValidateAdamWConfig(cfg));
  if (shard_end < 0) shard_end = total;
  if (total < 0 || shard_begin < 0 || shard_begin > shard_end || shard_end > total)
    return Status::Error("AdamW: shard [" + std::to_string(shard_begin) + ", " +
                         std::to_string(shard_end) + ") is not inside the slab [0, " +
                         std::to_string(total) + ")");
  AdamW opt;
  XT_ASSIGN_OR_RETURN(opt.runs_, DecayRuns(std::move(ranges), total, shard_begin, shard_end));
  opt.cfg_ = cfg;
  opt.shard_begin_ = shard_begin;
  opt.shard_end_ = shard_end;
  // Pages of the moments commit as they are first written: frozen runs (LoRA) never are.
  const int64_t n = shard_end - shard_begin;
  std::shared_ptr<float> m = AllocZeroPages(n, "AdamW's exp_avg"),
                         v = AllocZeroPages(n, "AdamW's exp_avg_sq");
  opt.m_ = Tensor::Wrap(DType::F32, {n}, m.get(), m);
  opt.v_ = Tensor::Wrap(DType::F32, {n}, v.get(), v);
  return opt;
}

namespace {

// n elements, each with torch's arithmetic in torch's order; __restrict and no branch on the
// element let the compiler vectorize it (the results are the scalar loop's, bit for bit).
void UpdateChunk(float* __restrict p, const float* __restrict g, float* __restrict m,
                 float* __restrict v, int64_t n, const AdamWStepScalars& s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * s.grad_scale;  // exact when grad_scale is 1
    const float pi = p[i] * s.decay;       // exact when decay is 1
    // torch's lerp: weight < 0.5 ? m + w (g - m) : g - (g - m)(1 - w).
    const float mi = s.low_weight ? m[i] + s.w1 * (gi - m[i]) : gi - (gi - m[i]) * s.one_minus_w1;
    const float vi = v[i] * s.b2 + s.w2 * gi * gi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + s.neg_step_size * mi / denom;
  }
}

}  // namespace

void AdamW::Step(float* params, const float* grads, double lr, float grad_scale) {
  XT_CHECK(lr >= 0 && std::isfinite(lr), "AdamW::Step: lr = " + FormatG(lr));
  XT_CHECK(grad_scale >= 0 && std::isfinite(grad_scale),
           "AdamW::Step: grad_scale = " + FormatG(grad_scale));
  ++step_;
  float* m = m_.f32();
  float* v = v_.f32();
  constexpr int64_t kChunk = 1 << 14;
  // The scalars of the runs without weight decay and of those with it, formed once.
  const AdamWStepScalars scalars[2] = {
      MakeAdamWStepScalars(cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, step_, lr,
                           grad_scale, false),
      MakeAdamWStepScalars(cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, step_, lr,
                           grad_scale, true)};
#pragma omp parallel
  for (const DecayRun& r : runs_) {
    if (r.frozen) continue;
    const AdamWStepScalars& rs = scalars[r.decay ? 1 : 0];
#pragma omp for schedule(static) nowait
    for (int64_t c = r.begin; c < r.end; c += kChunk) {
      const int64_t n = std::min(kChunk, r.end - c);
      UpdateChunk(params + c, grads + c, m + c, v + c, n, rs);
    }
  }
}

Status AdamW::Restore(const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t step) {
  auto check = [&](const Tensor& t, const char* name) {
    if (t.dtype() != DType::F32 || t.numel() != numel())
      return Status::Error(std::string("AdamW state '") + name + "': expected F32 with " +
                           std::to_string(numel()) + " elements, found " + DTypeName(t.dtype()) +
                           " " + ShapeString(t.shape()));
    return Status::OK();
  };
  XT_RETURN_IF_ERROR(check(exp_avg, "exp_avg"));
  XT_RETURN_IF_ERROR(check(exp_avg_sq, "exp_avg_sq"));
  if (step < 0) return Status::Error("AdamW state: step = " + std::to_string(step) + " < 0");
  // The optimizer's own tensors (exp_avg(), exp_avg_sq()) may be passed: nothing to copy.
  if (exp_avg.data() != m_.data()) std::memcpy(m_.data(), exp_avg.data(), m_.nbytes());
  if (exp_avg_sq.data() != v_.data()) std::memcpy(v_.data(), exp_avg_sq.data(), v_.nbytes());
  step_ = step;
  return Status::OK();
}

}  // namespace xt
