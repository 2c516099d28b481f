// Packer: tokenized samples -> rows of at most `max_length` tokens, each row a sequence of whole
// documents (cu_seqlens) whose position ids restart at 0, as model/batch.h consumes them.
//
// Packing is planned from the sample lengths alone (PlanPacking), then rows are materialized one
// at a time on demand (BuildRow), so a packed dataset costs 16 bytes per sample in memory, not a
// second copy of its tokens.
//
// Algorithm: the samples are visited in a seeded random order (SeededPermutation: our own
// Fisher-Yates over std::mt19937_64, whose output the standard fixes, so every platform and
// standard library packs identically), and each is put into the FIRST row that still has room
// for it (first-fit, O(n log rows) with a max-tree over the rows' free space), opening a new row
// when none has. First-fit rather than next-fit: next-fit closes a row as soon as one sample does
// not fit, which with SFT's long-tailed lengths wastes several times more tokens (see
// PackStats::waste); first-fit keeps every row open and fills the holes with later short
// samples. Mixing samples from far apart in the order costs nothing, since the sampler
// reshuffles rows every epoch. A sample is never split: one longer than a row is truncated to
// its first max_length tokens or dropped (PackOptions::overlong), and counted.
//
// Padding: with PackOptions::pad (the default) every row is filled up to exactly max_length by one
// extra document of pad_id tokens with labels -100 (so no loss), its own cu_seqlens entry and
// positions 0, 1, ...: rows have a fixed shape and cu_seqlens always cover every token, as
// Batch::Packed requires. Without it, rows end with their last sample.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/sample.h"
#include "xtuner/data/token_cache.h"
#include "xtuner/model/batch.h"

namespace xt {

// A permutation of [0, n), a function of (n, seed) only, the same on every platform: Fisher-Yates
// driven by std::mt19937_64(seed) with unbiased rejection sampling (never std::shuffle or
// std::uniform_int_distribution, whose algorithms the standard leaves open). Also the sampler's.
std::vector<int64_t> SeededPermutation(int64_t n, uint64_t seed);

enum class Overlong {
  kTruncate,  // keep the first max_length tokens (the row holds that sample alone)
  kDrop,      // leave the sample out
};

struct PackOptions {
  int64_t max_length = 0;  // tokens per row, >= 1
  uint64_t seed = 0;       // the order samples are packed in
  Overlong overlong = Overlong::kTruncate;
  bool pad = true;     // fill every row to max_length with a padding document
  int32_t pad_id = 0;  // token id of the padding (its labels are -100)
};

struct PackStats {
  int64_t rows = 0;
  int64_t samples = 0;      // samples packed (whole or truncated)
  int64_t tokens = 0;       // sample tokens in the rows
  int64_t padding = 0;      // rows * max_length - tokens: padding tokens, or the slack
  int64_t truncated = 0;    // samples cut to max_length
  int64_t dropped = 0;      // samples left out: longer than a row under kDrop, or empty
  int64_t tokens_lost = 0;  // tokens cut or dropped
  // Fraction of the rows' capacity that is padding: padding / (rows * max_length).
  double waste() const;
};

// Where a row's tokens come from: tokens [0, length) of sample `sample`.
struct PackPiece {
  int64_t sample = 0;
  int64_t length = 0;
  bool operator==(const PackPiece&) const = default;
};

// Which samples go to which row: the result of planning, independent of the tokens.
struct PackPlan {
  PackOptions options;
  std::vector<int64_t> row_begin;  // (rows + 1): row r is pieces[row_begin[r], row_begin[r + 1])
  std::vector<PackPiece> pieces;   // in the order placed (the seeded order, within each row)
  PackStats stats;

  int64_t num_rows() const { return int64_t(row_begin.size()) - 1; }
  std::span<const PackPiece> row(int64_t r) const;
};

// Plans the packing of samples of the given lengths (lengths[i] of sample i; TokenCache::lengths()
// gives them). The plan depends on the lengths and the options only. Errors: max_length < 1 or
// beyond int32, a negative length, a negative pad_id (with pad).
Result<PackPlan> PlanPacking(const std::vector<int64_t>& lengths, const PackOptions& options);

// One packed row, ready for the model (see RowToBatch).
struct PackedRow {
  std::vector<int32_t> input_ids;     // (T), T = max_length when padded
  std::vector<int32_t> labels;        // (T) unshifted as in Sample; -100 on padding
  std::vector<int64_t> cu_seqlens;    // (docs + 1): document d is tokens [cu[d], cu[d + 1])
  std::vector<int32_t> position_ids;  // (T): 0, 1, ... within each document
  std::vector<int64_t> sample_index;  // (docs): the source sample of each document, -1 = padding
};

// Row r (0 <= r < plan.num_rows(), else XT_CHECK fails) from the samples the plan was made for
// (same count and lengths, else XT_CHECK fails). Thread-safe: rows may be built concurrently.
PackedRow BuildRow(const PackPlan& plan, int64_t r, const TokenCache& samples);
PackedRow BuildRow(const PackPlan& plan, int64_t r, const std::vector<Sample>& samples);

// The model's view of a row (Batch::Packed: targets shifted within each document).
Result<Batch> RowToBatch(const PackedRow& row);

}  // namespace xt
