#include "xtuner/cuda/bf16_copies.h"

#include <algorithm>

#include "xtuner/cuda/gemm_cuda.h"

namespace xt::cuda {

Bf16Copies::Bf16Copies(const ParamLayout& layout, bool tied)
    : layout_(layout),
      own_(layout.units().size()),
      mirror_unit_(tied ? 0 : 1),  // the input embedding enters matmuls only as the tied lm_head
      mirror_begin_(layout.units()[tied ? 0 : 1].begin),
      valid_(layout.units().size(), 0) {}

void Bf16Copies::ParamsChanged(bool mirror_written) {
  // (Only copies made before stay current: a unit the mirror covers but no pass has acquired
  // yet holds nothing but what the optimizer wrote.)
  const bool kept = mirror_written && mirror_.size() > 0;
  for (int64_t u = 0; u < int64_t(valid_.size()); ++u) valid_[u] = kept && InMirror(u) && valid_[u];
}

Bf16Mirror Bf16Copies::mirror() const {
  if (mirror_.size() == 0) return {};
  return {mirror_.get(), mirror_begin_, layout_.total()};
}

Status Bf16Copies::SetBf16Only(SlabRanges ranges) {
  for (const auto& [at, n] : ranges)
    if (!mirror_possible_ || at < mirror_begin_ || at + n > layout_.total())
      return Status::Error("Bf16Copies: weights held in bf16 only outside the mirror");
  bf16_only_ = std::move(ranges);
  return Status::OK();
}

Status Bf16Copies::ReserveMirror(void* stream) {
  return mirror_.Reserve(layout_.total() - mirror_begin_, stream);
}

Status Bf16Copies::Acquire(int64_t u, const float* p, void* stream) {
  const ParamUnit& r = layout_.units()[u];
  uint16_t* copy = nullptr;
  if (InMirror(u)) {
    XT_RETURN_IF_ERROR(ReserveMirror(stream));
    copy = mirror_.get() + (r.begin - mirror_begin_);
  } else {
    XT_RETURN_IF_ERROR(own_[u].Reserve(r.size(), stream));
    copy = own_[u].get();
  }
  if (!valid_[u]) {  // the unit's fp32 parameters rounded, around the ranges held in bf16 only
    int64_t at = r.begin;
    for (const auto& [begin, n] : bf16_only_) {
      if (begin + n <= at || begin >= r.end) continue;
      if (begin > at)
        XT_RETURN_IF_ERROR(ToBf16(copy + (at - r.begin), p + (at - r.begin), begin - at, stream));
      at = std::min(r.end, begin + n);
    }
    if (r.end > at)
      XT_RETURN_IF_ERROR(ToBf16(copy + (at - r.begin), p + (at - r.begin), r.end - at, stream));
    valid_[u] = 1;
  }
  live_.push_back({u, p, r.size(), copy});
  return Status::OK();
}

void Bf16Copies::Release(int64_t u, bool held) {
  live_.erase(
      std::remove_if(live_.begin(), live_.end(), [&](const Live& l) { return l.unit == u; }),
      live_.end());
  if (!held) {
    own_[u] = DeviceArray<uint16_t>();
    valid_[u] = 0;
  }
}

const uint16_t* Bf16Copies::Find(const float* x) const {
  for (const Live& l : live_)
    if (x >= l.base && x < l.base + l.size) return l.copy + (x - l.base);
  return nullptr;
}

}  // namespace xt::cuda
