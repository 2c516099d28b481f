// ParamSource: where a Transformer finds its parameters and puts its gradients, one unit at a
// time (units: ParamLayout::units(), ranges of the model's slab). The model itself keeps whole
// slabs (LocalParams below); ZeRO-3 keeps only a shard per rank and gathers a unit when asked
// (dist/sharded_params.h).
//
// Contract, for unit u of the model's layout:
//   Acquire(u)  -> u's parameters (units()[u].size() floats), valid until Release(u);
//   Grads(u)    -> a buffer for the gradients of what of u trains (ParamLayout::trainable(u):
//                  all of u but in a LoRA run; element 0 is trainable(u).begin's; null, or
//                  never read, where nothing of u trains): the model ADDS into it; valid until
//                  GradsDone(u), which folds it into the stored gradients. Calling Grads(u)
//                  again before GradsDone(u) returns the same buffer.
//   GradsToWrite(u, &blank) -> the same buffer, for a model that can WRITE gradients: *blank
//                  true says its contents are undefined (the source skipped zeroing them), and
//                  the model must then assign every element of it before GradsDone(u)
//                  (gradients it does not produce as zeros), adding only into what it wrote.
//                  The unit stays blank until GradsDone(u): a step that fails before leaves it
//                  blank, and its partial writes are never read as gradients. The default is
//                  Grads(u) with *blank false. Saves the zeroing pass and the first
//                  accumulation's read of each gradient (on a GPU, 8 bytes a parameter of memory
//                  traffic per step).
//   Held(u)     -> whether u's parameters are held whole here (Acquire copies and gathers
//                  nothing, its pointer stays valid, its contents change only when the
//                  parameters are updated): a model may keep what it derives from them (e.g. a
//                  bf16 copy) across calls, which for gathered units would cost the whole model.
// Every rank of a distributed run calls these in the same order (they may communicate).
#pragma once

#include <cstdint>

namespace xt {

class ParamSource {
 public:
  virtual ~ParamSource() = default;
  virtual const float* Acquire(int64_t unit) = 0;
  virtual void Release(int64_t unit) = 0;
  virtual float* Grads(int64_t unit) = 0;
  virtual void GradsDone(int64_t unit) = 0;
  virtual float* GradsToWrite(int64_t unit, bool* blank) {
    *blank = false;
    return Grads(unit);
  }
  virtual bool Held(int64_t /*unit*/) const { return false; }
};

// A unit's parameters (gradients) as Acquire (Grads) returned them, addressed by offsets of the
// layout's slab: P(offset), for an offset inside the unit that starts at `begin`; null for -1
// (LayerOffsets' "no such weight").
struct UnitParams {
  const float* base;
  int64_t begin;
  const float* operator()(int64_t offset) const {
    return offset < 0 ? nullptr : base + (offset - begin);
  }
};
// A unit's gradients as Grads returned them: those of what of it trains, the offsets [begin, end)
// (ParamLayout::trainable), base holding begin's. Offsets outside it are frozen parameters: no
// gradient, null; and so is -1 (and every offset of an empty range).
struct UnitGrads {
  float* base = nullptr;
  int64_t begin = 0, end = 0;
  float* operator()(int64_t offset) const {
    return offset >= 0 && offset >= begin && offset < end ? base + (offset - begin) : nullptr;
  }
};

}  // namespace xt
