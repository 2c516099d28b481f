// Batch: one micro-batch as the model sees it: a packed row of T tokens holding one or more
// documents. Rows of a [B, S] batch become B documents of S tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

struct Batch {
  std::vector<int32_t> ids;         // (T)
  std::vector<int32_t> cu_seqlens;  // (docs + 1): document d is tokens [cu[d], cu[d+1])
  std::vector<int32_t> positions;   // (T): restart at 0 in every document
  std::vector<int32_t> targets;     // (T): the next token's label, or -100 (no loss)
  // (T) or empty: each token's key for the training noise, LoRA's dropout masks
  // (ops/dropout_mask.h; the trainer's from RowNoiseKeys). Empty: no dropout (evaluation,
  // generation, or a run without it).
  std::vector<uint64_t> noise;

  int64_t num_tokens() const { return int64_t(ids.size()); }
  int64_t num_docs() const { return int64_t(cu_seqlens.size()) - 1; }
  int64_t num_loss_tokens() const;

  // B rows of S tokens (row-major ids (B*S)); labels (B*S) are unshifted, as HF takes them
  // (-100 = ignored; may be empty for no loss): token t of a row predicts labels[t + 1].
  static Result<Batch> FromRows(const std::vector<int64_t>& ids, const std::vector<int64_t>& labels,
                                int64_t B, int64_t S);
  // Documents packed into one row by cu_seqlens; labels as in FromRows, within each document.
  static Result<Batch> Packed(const std::vector<int64_t>& ids, const std::vector<int64_t>& labels,
                              const std::vector<int64_t>& cu_seqlens);
  // No tokens and no documents: a rank's turn in a step's collectives when it has no rows left
  // (its experts still serve the other ranks' tokens). The only batch of 0 tokens Validate takes.
  static Batch Empty();
  // The noise keys of a row of `n` tokens: token t's is a hash of row_key and t.
  static void AppendNoise(uint64_t row_key, int64_t n, std::vector<uint64_t>* noise);
  bool empty() const { return ids.empty(); }
  // Checks ids and targets against the vocabulary and the cu_seqlens structure.
  Status Validate(int64_t vocab_size) const;
};

}  // namespace xt
