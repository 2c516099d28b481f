#include "xtuner/train/train_data.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "xtuner/core/rng.h"
#include "xtuner/train/metrics_flops.h"

namespace xt {

namespace fs = std::filesystem;

std::string TokenizerPathFor(const TrainConfig& cfg) {
  if (!cfg.tokenizer.empty()) return TokenizerJsonPath(cfg.tokenizer);
  fs::path model =
      cfg.load_from.empty() ? fs::path(cfg.model_config).parent_path() : fs::path(cfg.load_from);
  return (model / "tokenizer.json").string();
}

namespace {

// The template: a name, or "auto" recognised from tokenizer_config.json beside the tokenizer.
Result<ChatTemplate> TemplateFor(const TrainConfig& cfg, const std::string& tokenizer_path) {
  std::string name = cfg.chat_template;
  if (name == "auto") {
    const std::string tc =
        (fs::path(tokenizer_path).parent_path() / "tokenizer_config.json").string();
    if (!fs::exists(tc)) {
      std::string names;
      for (const std::string& n : ChatTemplate::Names()) names += (names.empty() ? "" : ", ") + n;
      return Status::Error("data.chat_template = \"auto\" needs " + tc +
                           "; name a template instead (one of: " + names + ")");
    }
    XT_ASSIGN_OR_RETURN(name, ChatTemplate::DetectName(tc));
  }
  const ChatTemplateOptions options{cfg.reasoning_effort, cfg.model_identity, cfg.current_date};
  XT_RETURN_IF_ERROR(options.CheckTakenBy(name, "data."));
  return ChatTemplate::ByName(name, options);
}

}  // namespace

std::string TrainData::TemplateSummary(const TrainConfig& cfg) const {
  const ChatTemplate& t = *chat_template;
  if (t.name() != "harmony") return t.name();
  const std::string date = cfg.current_date.empty() && !cache_report.rebuilt()
                               ? "that of the cached tokens"
                               : t.options().current_date;
  return "harmony (reasoning " + t.options().reasoning_effort + ", current date " + date + ")";
}

Result<TrainData> PrepareTrainData(const TrainConfig& cfg, int64_t vocab_size, std::FILE* log) {
  TrainData d;
  d.tokenizer_path = TokenizerPathFor(cfg);
  if (cfg.tokenizer.empty() && !fs::exists(d.tokenizer_path))
    return Status::Error(d.tokenizer_path +
                         ": no tokenizer.json beside the model; name one with "
                         "--tokenizer PATH (data.tokenizer)");
  XT_ASSIGN_OR_RETURN(d.tokenizer, Tokenizer::FromFile(d.tokenizer_path));
  if (d.tokenizer->vocab_size() > vocab_size)
    return Status::Error(d.tokenizer_path + ": the tokenizer has " +
                         std::to_string(d.tokenizer->vocab_size()) +
                         " tokens but the model's vocab_size is " + std::to_string(vocab_size) +
                         ": they do not belong together");
  XT_ASSIGN_OR_RETURN(d.chat_template, TemplateFor(cfg, d.tokenizer_path));

  std::vector<DatasetSpec> specs;
  for (const DatasetConfig& dc : cfg.datasets) {
    if (!fs::exists(dc.path)) return Status::Error(dc.path + ": no such dataset file");
    DatasetSpec s;
    s.path = dc.path;
    s.ratio = dc.ratio;
    XT_ASSIGN_OR_RETURN(s.kind, ParseDatasetKind(dc.kind));
    specs.push_back(s);
  }
  LoadOptions opts;
  XT_ASSIGN_OR_RETURN(opts.on_bad_sample, ParseOnBadSample(cfg.on_bad_sample));
  if (log && isatty(fileno(log))) {  // a live bar on a terminal; nothing per block in log files
    opts.progress = [log](int64_t done, int64_t total) {
      const int width = 30, filled = total > 0 ? int(width * done / total) : width;
      std::fprintf(log, "\r  tokenizing [%s%s] %3d%%", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(),
                   total > 0 ? int(100 * done / total) : 100);
      if (done >= total) std::fputc('\n', log);
      std::fflush(log);
    };
  }
  opts.train_last_turn_only = cfg.train_last_turn_only;

  // The cache key: every input that changes the samples.
  CacheKeyBuilder key;
  XT_RETURN_IF_ERROR(key.AddFile("tokenizer", d.tokenizer_path));
  key.AddBytes("template", d.chat_template->name());
  key.AddBytes("options", std::string("on_bad_sample=") + cfg.on_bad_sample +
                              ";last_turn_only=" + (cfg.train_last_turn_only ? "1" : "0") +
                              ";seed=" + std::to_string(cfg.seed));
  // The harmony options; the date as configured: an empty current_date (today) keys the cache of
  // the day it was built, so that a run resumed on another day reuses its tokens.
  if (d.chat_template->name() == "harmony") {
    const ChatTemplateOptions& o = d.chat_template->options();
    key.AddBytes("harmony", "reasoning_effort=" + o.reasoning_effort + ";current_date=" +
                                cfg.current_date + ";model_identity=" + o.model_identity);
  }
  for (const DatasetConfig& dc : cfg.datasets) {
    XT_RETURN_IF_ERROR(key.AddFile("data", dc.path));
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.17g", dc.ratio);
    key.AddBytes("ratio+kind", std::string(ratio) + "/" + dc.kind);
  }
  const CacheKey k = key.Finish();
  const fs::path cache_dir = fs::path(cfg.work_dir) / "cache";
  std::error_code ec;
  fs::create_directories(cache_dir, ec);
  if (ec) return Status::Error(cache_dir.string() + ": cannot create: " + ec.message());
  const std::string cache_path = (cache_dir / ("tokens-" + k.Hex() + ".bin")).string();

  auto build = [&](TokenCacheWriter& w) -> Status {
    if (log)
      std::fprintf(log, "tokenizing %zu dataset(s) into %s\n", specs.size(), cache_path.c_str());
    XT_ASSIGN_OR_RETURN(std::vector<Sample> samples,
                        LoadMixture(specs, *d.tokenizer, *d.chat_template, opts, uint64_t(cfg.seed),
                                    &d.load_reports));
    for (const LoadReport& r : d.load_reports)
      if (log) std::fprintf(log, "  %s\n", r.Summary().c_str());
    for (const Sample& s : samples) XT_RETURN_IF_ERROR(w.Add(s));
    return Status::OK();
  };
  XT_ASSIGN_OR_RETURN(d.cache, LoadOrBuildTokenCache(cache_path, k, build, &d.cache_report));
  if (d.cache->num_samples() == 0)
    return Status::Error("no training samples: every line of the datasets was skipped");

  // Padding: the tokenizer's end-of-text token (its label is -100 anyway).
  auto eos = DefaultEosToken(*d.tokenizer);
  if (eos.ok()) d.pad_id = *d.tokenizer->TokenToId(*eos);
  PackOptions po;
  po.max_length = cfg.max_length;
  po.seed = uint64_t(cfg.seed);
  po.overlong = cfg.overlong == "drop" ? Overlong::kDrop : Overlong::kTruncate;
  po.pad = true;
  po.pad_id = d.pad_id;
  XT_ASSIGN_OR_RETURN(d.plan, PlanPacking(d.cache->lengths(), po));
  d.pack_stats = d.plan.stats;
  if (d.plan.num_rows() == 0) return Status::Error("no packed rows: every sample was dropped");
  return d;
}

Result<MicroBatch> BuildMicroBatch(const TrainData& data, const std::vector<int64_t>& rows,
                                   int64_t window, const std::vector<uint64_t>& row_noise) {
  XT_CHECK(row_noise.empty() || row_noise.size() == rows.size(),
           "BuildMicroBatch: one noise key per row");
  std::vector<int64_t> ids, labels, cu = {0};
  std::vector<uint64_t> noise;
  MicroBatch mb;
  for (size_t i = 0; i < rows.size(); ++i) {
    PackedRow row = BuildRow(data.plan, rows[i], *data.cache);
    if (!row_noise.empty()) Batch::AppendNoise(row_noise[i], int64_t(row.input_ids.size()), &noise);
    const int64_t base = int64_t(ids.size());
    for (size_t d = 0; d + 1 < row.cu_seqlens.size(); ++d) {
      const int64_t len = row.cu_seqlens[d + 1] - row.cu_seqlens[d];
      cu.push_back(base + row.cu_seqlens[d + 1]);
      if (row.sample_index[d] < 0) continue;  // padding
      mb.tokens += len;
      mb.sum_doc_len_sq += double(len) * double(len);
      mb.sum_windowed_len_sq += WindowedLenSq(len, window);
      for (int64_t t = row.cu_seqlens[d]; t < row.cu_seqlens[d + 1]; ++t)
        mb.masked += row.labels[t] == -100;
    }
    ids.insert(ids.end(), row.input_ids.begin(), row.input_ids.end());
    labels.insert(labels.end(), row.labels.begin(), row.labels.end());
  }
  XT_ASSIGN_OR_RETURN(mb.batch, Batch::Packed(ids, labels, cu));
  mb.batch.noise = std::move(noise);
  return mb;
}

std::vector<uint64_t> RowNoiseKeys(uint64_t seed, int64_t step, int64_t first, int64_t n) {
  std::vector<uint64_t> keys;
  for (int64_t j = first; j < first + n; ++j) {
    uint64_t state = seed ^ 0x6c6f72615f6e6f69ull;  // "lora_noi"
    state = SplitMix64(&state) + uint64_t(step);
    state = SplitMix64(&state) + uint64_t(j);
    keys.push_back(SplitMix64(&state));
  }
  return keys;
}

}  // namespace xt
