// Bf16Copies: the bf16 copies of a model's parameter units that its bf16 matmuls read
// (CudaModel in bf16 mode). A unit's copy is made when the unit is acquired and its copy is not
// current; it is kept across steps for the units the source holds (until the parameters
// change), dropped at release for gathered ones (keeping those would hold the whole model in
// bf16 on every rank).
//
// Where the source holds every unit whose weights enter matmuls (one GPU), their copies share
// one allocation, the mirror, laid out as the slab from its first such unit on: an optimizer can
// then write them beside the parameters (mirror(), AdamWStepRange), instead of the next step
// reading every parameter again to round it. Device memory on the stream given; not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/cuda/device_array.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/model/params.h"
#include "xtuner/plan/frozen_bf16.h"

namespace xt::cuda {

class Bf16Copies {
 public:
  // layout: the model's (outlives this); tied: the input embedding's unit is also the lm_head
  // (it then enters matmuls, and the mirror starts at it).
  Bf16Copies(const ParamLayout& layout, bool tied);
  // The mirror's first unit: the first whose weights enter matmuls.
  int64_t mirror_unit() const { return mirror_unit_; }
  // Whether the source holds every unit from mirror_unit() on (set once, with the source).
  void SetMirrorPossible(bool possible) { mirror_possible_ = possible; }
  // With the mirror possible: the ranges of the slab (inside the mirror) whose parameters are
  // held in bf16 only (plan/frozen_bf16.h). Their copies are the mirror's, written by the caller
  // (after ReserveMirror) and never made from the fp32 parameters, which hold nothing there.
  Status SetBf16Only(SlabRanges ranges);
  // Allocates the mirror now (else at its first use).
  Status ReserveMirror(void* stream);
  // The parameters changed: every copy is stale, or with mirror_written (an optimizer wrote the
  // whole mirror) every copy but the mirror's units' that were current.
  void ParamsChanged(bool mirror_written);
  // The mirror (null data before its first use).
  Bf16Mirror mirror() const;
  // Unit u's parameters p as acquired now: its copy, made if not current, and findable by Find
  // until Release(u).
  Status Acquire(int64_t u, const float* p, void* stream);
  // held: whether the source holds u (its copy is kept), else it is dropped.
  void Release(int64_t u, bool held);
  // The bf16 twin of a pointer into an acquired unit, or null.
  const uint16_t* Find(const float* x) const;
  // A step begins: no unit is acquired (forgets those a failed step left acquired).
  void BeginStep() { live_.clear(); }

 private:
  bool InMirror(int64_t u) const { return mirror_possible_ && u >= mirror_unit_; }
  const ParamLayout& layout_;
  std::vector<DeviceArray<uint16_t>> own_;  // per unit, for units outside the mirror
  DeviceArray<uint16_t> mirror_;            // units mirror_unit_.. (allocated at first use)
  int64_t mirror_unit_ = 0, mirror_begin_ = 0;
  bool mirror_possible_ = false;
  SlabRanges bf16_only_;
  std::vector<char> valid_;  // per unit: the copy matches the parameters
  struct Live {
    int64_t unit;
    const float* base;  // the unit's fp32 parameters as acquired
    int64_t size;
    const uint16_t* copy;
  };
  std::vector<Live> live_;  // the units acquired now
};

}  // namespace xt::cuda
