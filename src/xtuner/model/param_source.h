// ParamSource: where a Transformer finds its parameters and puts its gradients, one unit at a
// time (units: ParamLayout::units(), ranges of the model's slab). The model itself keeps whole
// slabs (LocalParams below); ZeRO-3 keeps only a shard per rank and gathers a unit when asked
// (dist/sharded_params.h).
//
// Contract, for unit u of the model's layout:
//   Acquire(u)  -> u's parameters (units()[u].size() floats), valid until Release(u);
//   Grads(u)    -> a buffer for u's gradients: the model ADDS into it; valid until GradsDone(u),
//                  which folds it into the stored gradients. Calling Grads(u) again before
//                  GradsDone(u) returns the same buffer.
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
};

}  // namespace xt
