#include "xtuner/optim/non_finite_guard.h"

#include <cstdio>
#include <string>

namespace xt {

Status NonFiniteGuard::Record(bool finite, double loss) {
  if (finite) {
    consecutive_ = 0;
    return Status::OK();
  }
  ++consecutive_;
  ++total_skipped_;
  if (max_consecutive_ <= 0 || consecutive_ < max_consecutive_) return Status::OK();
  char loss_str[32];
  std::snprintf(loss_str, sizeof(loss_str), "%.6g", loss);
  return Status::Error(
      "stopping: " + std::to_string(consecutive_) +
      " optimizer steps in a row had a non-finite gradient (NaN or Inf); last loss was " +
      loss_str + "; " + std::to_string(total_skipped_) +
      " steps skipped in all. Lower the learning rate or tighten gradient clipping, check the "
      "data for corrupt samples, or resume from an earlier checkpoint");
}

}  // namespace xt
