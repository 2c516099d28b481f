// Counts optimizer steps skipped because the gradient was not finite (NaN or Inf), and stops
// the run when too many come in a row: one bad batch is survivable, a diverged run is not.
//
// Usage in the trainer, once per optimizer step:
//   double norm = clip_grad_norm(grads, n, max_norm);
//   bool finite = norm_is_finite(norm);
//   XT_RETURN_IF_ERROR(guard.Record(finite, loss));
//   if (finite) adamw.Step(params, grads, schedule.lr(adamw.step()));
// Not thread-safe (one per trainer).
#pragma once

#include <cstdint>

#include "xtuner/core/status.h"

namespace xt {

class NonFiniteGuard {
 public:
  // The run stops when `max_consecutive` steps in a row are non-finite (1: at the first one);
  // max_consecutive <= 0 never stops, only counts.
  explicit NonFiniteGuard(int max_consecutive) : max_consecutive_(max_consecutive) {}

  // Records one optimizer step: finite = false means it is skipped. `loss` is that step's loss,
  // for the message. Returns an error once the limit of consecutive skips is reached, e.g.
  //   "stopping: 5 optimizer steps in a row had a non-finite gradient (NaN or Inf); last loss
  //    was nan; 7 steps skipped in all; ..."
  // and keeps returning it for every further non-finite step. A finite step resets the run of
  // consecutive skips (not the total).
  Status Record(bool finite, double loss);

  int max_consecutive() const { return max_consecutive_; }
  int consecutive() const { return consecutive_; }          // current run of skipped steps
  int64_t total_skipped() const { return total_skipped_; }  // over the whole run
  // Sets the counters from a checkpoint, so a resumed run counts on.
  void Restore(int consecutive, int64_t total_skipped) {
    consecutive_ = consecutive, total_skipped_ = total_skipped;
  }

 private:
  int max_consecutive_;
  int consecutive_ = 0;
  int64_t total_skipped_ = 0;
};

}  // namespace xt
