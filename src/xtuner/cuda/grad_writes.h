// GradWrites: one step's record of which gradient tensors it has written, so that gradients
// can be written instead of added into a zeroed buffer (ParamSource::GradsToWrite). For a unit
// whose buffer came blank (contents undefined), the first product into a tensor assigns it
// (Beta 0: the product does not read it) and later ones add; a kernel that can only add has its
// tensor zeroed first (Prepare); whatever the step never wrote is zeroed when the unit closes,
// so a blank unit leaves its step fully written. A unit that came with contents is added into
// throughout (Beta 1, nothing zeroed). A "unit" here is what of it trains (CudaModel opens a
// LoRA run's adapters only: its frozen weights have no gradient to write).
//
// Tensors are written whole: a write that covers part of a written range and part of an
// unwritten one, or memory outside every open unit, is a programming error (XT_CHECK).
// Host bookkeeping; the zeroing is queued on the stream given. Not thread-safe.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"

namespace xt::cuda {

class GradWrites {
 public:
  // The unit's gradient buffer [base, base + size), blank or not. Once per unit per step.
  void Open(float* base, int64_t size, bool blank);
  // For a product that writes all of [p, p + n): 0 (assign) the first time in a blank unit,
  // else 1 (add). p null (a frozen parameter's gradient, which nothing writes): 1, no record.
  float Beta(const float* p, int64_t n);
  // For a kernel that adds into [p, p + n): zeroes it first when Beta would have said 0; nothing
  // for a null p.
  Status Prepare(float* p, int64_t n, void* stream);
  // Zeroes what the step never wrote of the unit at `base` (blank units), and forgets the unit.
  Status Close(const float* base, void* stream);

 private:
  struct Unit {
    float* base;
    int64_t size;
    bool blank;
    std::vector<std::pair<int64_t, int64_t>> written;  // [begin, end) offsets, unordered
  };
  Unit& Find(const float* p, int64_t n);
  std::vector<Unit> units_;
};

}  // namespace xt::cuda
