#include "xtuner/cuda/grad_writes.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "xtuner/cuda/device.h"

namespace xt::cuda {

void GradWrites::Open(float* base, int64_t size, bool blank) {
  for (const Unit& u : units_) XT_CHECK(u.base != base, "GradWrites: a unit opened twice");
  units_.push_back({base, size, blank, {}});
}

GradWrites::Unit& GradWrites::Find(const float* p, int64_t n) {
  for (Unit& u : units_)
    if (p >= u.base && p + n <= u.base + u.size) return u;
  XT_CHECK(false, "GradWrites: a gradient write outside every open unit");
  return units_.front();  // not reached
}

float GradWrites::Beta(const float* p, int64_t n) {
  if (n == 0 || !p) return 1.0f;  // nothing written (null: a frozen parameter's gradient)
  Unit& u = Find(p, n);
  if (!u.blank) return 1.0f;
  const int64_t b = p - u.base, e = b + n;
  for (const auto& [wb, we] : u.written) {
    if (wb >= e || we <= b) continue;  // disjoint
    XT_CHECK(wb <= b && we >= e, "GradWrites: a write over part of a written range");
    return 1.0f;
  }
  u.written.push_back({b, e});
  return 0.0f;
}

Status GradWrites::Prepare(float* p, int64_t n, void* stream) {
  if (!p || Beta(p, n) != 0.0f) return Status::OK();
  return Check(cudaMemsetAsync(p, 0, size_t(n) * sizeof(float), cudaStream_t(stream)),
               "zero a gradient");
}

Status GradWrites::Close(const float* base, void* stream) {
  auto it =
      std::find_if(units_.begin(), units_.end(), [&](const Unit& u) { return u.base == base; });
  XT_CHECK(it != units_.end(), "GradWrites: closing a unit that is not open");
  Unit u = std::move(*it);
  units_.erase(it);
  if (!u.blank) return Status::OK();
  std::sort(u.written.begin(), u.written.end());
  int64_t at = 0;  // everything before `at` is written
  u.written.push_back({u.size, u.size});
  for (const auto& [wb, we] : u.written) {
    if (wb > at)
      XT_RETURN_IF_ERROR(Check(
          cudaMemsetAsync(u.base + at, 0, size_t(wb - at) * sizeof(float), cudaStream_t(stream)),
          "zero unwritten gradients"));
    at = std::max(at, we);
  }
  return Status::OK();
}

}  // namespace xt::cuda
