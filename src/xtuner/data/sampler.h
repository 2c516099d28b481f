// Sampler: which packed rows each data-parallel rank trains on at each step. Seeded, resumable,
// and independent of the number of ranks.
//
// The rows are read as one endless stream, epoch after epoch: epoch e visits every row exactly
// once, in the order SeededPermutation(num_rows, f(seed, e)) (a new shuffle per epoch). Step s
// takes the next global_batch_rows rows of the stream; that global batch is the same for any
// number of ranks R, and rank r gets its slice [r*n/R, (r+1)*n/R) (n = global_batch_rows, which
// R must divide). The concatenation of the R shares is the batch of a single rank.
//
// End of an epoch: WRAP, not drop_last. When an epoch has fewer rows left than a batch needs,
// the batch takes them and continues with the first rows of the next epoch's order. So no row
// is ever skipped, every batch is full (the loss weighting sees the same number of rows every
// step), and after k steps exactly k * global_batch_rows rows have been consumed: epoch and
// position follow from the step alone. (If num_rows < global_batch_rows a batch spans several
// epochs and may hold a row more than once.)
//
// State: (epoch, position) = the next row is row `position` of epoch `epoch`'s order. It is the
// same on every rank, so one rank saves it and every rank restores it; the number of ranks may
// change across a restart (the batches do not depend on it).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

struct SamplerOptions {
  int64_t global_batch_rows = 0;  // rows per step over all ranks, >= 1
  int64_t world_size = 1;         // data-parallel ranks R; must divide global_batch_rows
  int64_t rank = 0;               // this rank, in [0, world_size)
  uint64_t seed = 0;
};

// Everything needed to continue exactly where a run stopped. The first three fields identify the
// stream and must match the sampler restored into (else Restore fails: resuming with another
// dataset, packing or batch size would silently change the data).
struct SamplerState {
  uint64_t seed = 0;
  int64_t num_rows = 0;
  int64_t global_batch_rows = 0;
  int64_t epoch = 0;     // epochs fully consumed
  int64_t position = 0;  // rows of epoch `epoch` consumed, in [0, num_rows)

  bool operator==(const SamplerState&) const = default;
  // {"seed": u64, "num_rows": n, "global_batch_rows": n, "epoch": n, "position": n}
  nlohmann::json ToJson() const;
  // Errors: not an object, a key missing, not a non-negative integer. `source` names it in the
  // message (e.g. the checkpoint file).
  static Result<SamplerState> FromJson(const nlohmann::json& j, const std::string& source);
};

// Not thread-safe; one per rank. Cheap: holds one epoch's order (8 bytes per row).
class Sampler {
 public:
  // Errors: num_rows < 1, global_batch_rows < 1, world_size < 1, rank outside [0, world_size),
  // global_batch_rows not divisible by world_size.
  static Result<Sampler> Create(int64_t num_rows, const SamplerOptions& options);

  // This rank's rows (global_batch_rows / world_size indices into the packed rows) of the next
  // global batch, and advance by one step.
  std::vector<int64_t> Next();

  int64_t step() const;  // steps taken since epoch 0, position 0
  int64_t epoch() const { return epoch_; }
  int64_t position() const { return position_; }
  int64_t rows_per_rank() const { return options_.global_batch_rows / options_.world_size; }

  SamplerState state() const;
  // Continues from `state`. Errors (the sampler is unchanged): seed, num_rows or
  // global_batch_rows differ from this sampler's; position outside [0, num_rows); epoch < 0;
  // a state that is not at a batch boundary.
  Status Restore(const SamplerState& state);

 private:
  Sampler(int64_t num_rows, const SamplerOptions& options);
  const std::vector<int64_t>& OrderOf(int64_t epoch);

  int64_t num_rows_;
  SamplerOptions options_;
  int64_t epoch_ = 0, position_ = 0;
  int64_t order_epoch_ = -1;    // the epoch `order_` is for
  std::vector<int64_t> order_;  // (num_rows)
};

}  // namespace xt
