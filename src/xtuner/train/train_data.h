// TrainData: everything between the JSONL files and the model's batches, for one run:
// tokenizer + chat template -> datasets (mixed by ratio) -> tokenized cache (reused while the
// data, tokenizer, template and options are unchanged) -> packed rows -> micro-batches.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "xtuner/data/chat_template.h"
#include "xtuner/data/dataset.h"
#include "xtuner/data/packer.h"
#include "xtuner/data/token_cache.h"
#include "xtuner/data/tokenizer.h"
#include "xtuner/model/batch.h"
#include "xtuner/train/config.h"

namespace xt {

struct TrainData {
  // Always set by PrepareTrainData (optional only because they have no empty state).
  std::optional<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  std::string tokenizer_path;
  std::optional<TokenCache> cache;
  PackPlan plan;
  PackStats pack_stats;
  CacheReport cache_report;
  std::vector<LoadReport> load_reports;  // empty when the cache was reused
  int32_t pad_id = 0;

  int64_t num_rows() const { return plan.num_rows(); }
  // The chat template for the run's summary: its name, and harmony's options ("current date of
  // the cached tokens" where data.current_date is "" and the cache was reused).
  std::string TemplateSummary(const TrainConfig& cfg) const;
};

// The tokenizer.json a config uses: data.tokenizer (the tokenizer.json in it where it is a
// directory), or the one beside the model.
std::string TokenizerPathFor(const TrainConfig& cfg);

// Loads the tokenizer and template, then the cache (building it from the datasets when needed,
// printing progress to `log`), then plans the packing. Errors name the file and line at fault.
Result<TrainData> PrepareTrainData(const TrainConfig& cfg, int64_t vocab_size, std::FILE* log);

// One micro-batch from packed rows: the rows concatenated into one packed sequence.
// `tokens` receives the non-padding tokens, `masked` those of them without a label, and
// `sum_doc_len_sq` the sum of squared document lengths and `sum_windowed_len_sq` that of
// WindowedLenSq(length, window) (train/metrics_flops.h), for the FLOP count.
struct MicroBatch {
  Batch batch;
  int64_t tokens = 0, masked = 0;
  double sum_doc_len_sq = 0, sum_windowed_len_sq = 0;
};
// row_noise: empty, or a key per row (RowNoiseKeys) from which its tokens' Batch::noise is drawn.
Result<MicroBatch> BuildMicroBatch(const TrainData& data, const std::vector<int64_t>& rows,
                                   int64_t window = 0, const std::vector<uint64_t>& row_noise = {});

// The noise keys of rows [first, first + n) of step `step`'s global batch (LoRA's dropout
// masks): each a hash of the run's seed, the step and the row's place alone, so that a row draws
// the same masks on any mesh and with any micro_batch_size, and again when its step is resumed.
std::vector<uint64_t> RowNoiseKeys(uint64_t seed, int64_t step, int64_t first, int64_t n);

}  // namespace xt
