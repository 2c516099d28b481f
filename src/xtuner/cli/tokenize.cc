// xtuner tokenize CONFIG.toml [--set section.key=value ...]
// Builds (or finds) the tokenized cache of a training config's datasets and packs it, printing
// samples, tokens, the masked share, packed rows and what was truncated or dropped.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "xtuner/model/config.h"
#include "xtuner/train/train_data.h"

namespace xt::cli {

namespace {

Status RunTokenize(const std::string& path, const std::vector<std::string>& sets) {
  TrainConfig cfg;
  XT_RETURN_IF_ERROR(LoadTrainConfig(path, &cfg));
  for (const std::string& s : sets) XT_RETURN_IF_ERROR(ApplyOverride(s, &cfg));
  XT_RETURN_IF_ERROR(ValidateTrainConfig(cfg));
  XT_ASSIGN_OR_RETURN(ModelConfig mc,
                      ModelConfig::Load(cfg.load_from.empty() ? cfg.model_config : cfg.load_from));
  XT_ASSIGN_OR_RETURN(TrainData d, PrepareTrainData(cfg, mc.vocab_size, stdout));
  const TokenCache& c = *d.cache;
  const PackStats& p = d.pack_stats;
  std::printf("cache    %s (%s)\n", c.path().c_str(),
              d.cache_report.rebuilt() ? "built" : "reused: data, tokenizer and options unchanged");
  std::printf("template %s\n", d.TemplateSummary(cfg).c_str());
  std::printf("samples  %lld\n", (long long)c.num_samples());
  std::printf("tokens   %lld, of which %lld (%.1f%%) carry no loss\n", (long long)c.num_tokens(),
              (long long)c.num_masked_tokens(),
              100.0 * double(c.num_masked_tokens()) / double(std::max<int64_t>(1, c.num_tokens())));
  std::printf("packed   %lld rows of %lld tokens, %.2f%% padding\n", (long long)d.num_rows(),
              (long long)cfg.max_length, 100.0 * p.waste());
  std::printf("overlong %lld truncated, %lld dropped (data.overlong = %s)\n",
              (long long)p.truncated, (long long)p.dropped, cfg.overlong.c_str());
  return Status::OK();
}

}  // namespace

void AddTokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize", "Tokenize a training config's datasets into the cache and report what they hold");
  static std::string config;
  static std::vector<std::string> sets;
  cmd->add_option("config", config, "training config (.toml)")->required();
  cmd->add_option("--set", sets, "override a key: section.key=value (repeatable)");
  cmd->callback([] { Finish(RunTokenize(config, sets)); });
}

}  // namespace xt::cli
