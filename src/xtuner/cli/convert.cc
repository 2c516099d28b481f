// xtuner convert --checkpoint DIR --out DIR [--dtype bf16|fp32|fp8] [--tokenizer PATH]
//                [--shard-mb N] [--adapter-out DIR] [--base DIR]
// Turns a training checkpoint (work_dir/checkpoints/step-N) into a Hugging Face model directory;
// a LoRA run's is merged, and --adapter-out also writes its adapter as PEFT saves one.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "xtuner/core/file_util.h"
#include "xtuner/data/tokenizer.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"
#include "xtuner/train/config.h"
#include "xtuner/train/export_files.h"
#include "xtuner/train/train_checkpoint.h"
#include "xtuner/train/train_data.h"

namespace xt::cli {

namespace {

namespace fs = std::filesystem;

struct ConvertArgs {
  std::string checkpoint, out, dtype = "bf16", tokenizer, adapter_out, base;
  int64_t shard_mb = 5000;
};

// Marks "<out>.converting" as convert's own, so that a killed convert's is cleared and nothing
// else.
constexpr const char* kConvertingMark = ".xtuner-converting";

// An empty `dir` holding the mark: a killed convert's is cleared; any other directory there is an
// error that leaves it.
Status StartConverting(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::exists(fs::path(dir) / kConvertingMark, ec))
      return Status::Error(dir + " exists and is not an unfinished convert's output: move it away");
    fs::remove_all(dir, ec);
    if (ec)
      return Status::Error(dir + ": cannot remove a killed convert's output: " + ec.message());
  }
  fs::create_directories(dir, ec);
  if (ec) return Status::Error(dir + ": cannot create: " + ec.message());
  return WriteFileAtomically((fs::path(dir) / kConvertingMark).string(), "");
}

Status RunConvert(const ConvertArgs& o) {
  XT_ASSIGN_OR_RETURN(ExportDType dtype, ParseExportDType(o.dtype, "convert: --dtype"));
  fs::path ckpt = fs::path(o.checkpoint).lexically_normal();
  if (ckpt.filename().empty()) ckpt = ckpt.parent_path();  // "step-N/"
  if (!fs::exists(ckpt / "config.json") || !fs::exists(ckpt / "shards.json"))
    return Status::Error(o.checkpoint +
                         ": not a training checkpoint (no config.json and shards.json)");
  XT_ASSIGN_OR_RETURN(ModelConfig mc, ModelConfig::Load((ckpt / "config.json").string()));
  XT_ASSIGN_OR_RETURN(mc.lora, ReadCheckpointLora(ckpt.string()));
  if (mc.lora.enabled()) {  // checked as a run's [lora] is (a hand-edited config.json)
    XT_ASSIGN_OR_RETURN(
        mc.lora, ResolveLora(mc.lora, mc, (ckpt / "config.json").string() + ": xtuner_lora"));
  }
  if (!o.adapter_out.empty() && !mc.lora.enabled())
    return Status::Error("convert: --adapter-out: " + o.checkpoint +
                         " is not from a LoRA run (it has no adapters)");
  if (!o.base.empty() && !mc.lora.enabled())
    return Status::Error("convert: --base: " + o.checkpoint +
                         " is not from a LoRA run (it holds every weight)");
  // The model read a unit at a time, as it is written (one unit held, not the model).
  XT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointExportParams> params,
                      CheckpointExportParams::Open(ckpt.string(), mc, o.base));
  const ParamLayout layout(mc);
  // The tokenizer (given, or the one the run's config.toml names: work_dir/config.toml) and
  // the base model a LoRA adapter names.
  std::string tokenizer = o.tokenizer.empty() ? "" : TokenizerJsonPath(o.tokenizer), base_model;
  const fs::path run_config = ckpt.parent_path().parent_path() / "config.toml";
  if (fs::exists(run_config)) {
    TrainConfig cfg;
    if (LoadTrainConfig(run_config.string(), &cfg).ok()) {
      if (tokenizer.empty()) tokenizer = TokenizerPathFor(cfg);
      if (!cfg.load_from.empty())
        base_model = fs::absolute(cfg.load_from).lexically_normal().string();
    }
  }
  // A LoRA run's base that has moved (--base) holds its tokenizer where the recorded one is gone.
  if (o.tokenizer.empty() && !o.base.empty() && !tokenizer.empty() && !fs::exists(tokenizer) &&
      fs::exists(fs::path(o.base) / "tokenizer.json"))
    tokenizer = (fs::path(o.base) / "tokenizer.json").string();
  if (!tokenizer.empty() && !fs::exists(tokenizer))
    return Status::Error(tokenizer +
                         ": cannot copy the tokenizer: no such file (pass --tokenizer)");
  // A new directory is written whole or not at all: into "<out>.converting", then put in place.
  // An existing one is written into: each file replaced atomically, other files kept.
  fs::path out = fs::path(o.out).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "out/"
  const bool fresh = !fs::exists(out);
  const std::string dir = fresh ? out.string() + ".converting" : out.string();
  if (fresh) XT_RETURN_IF_ERROR(StartConverting(dir));
  Status st = SaveHfModelFrom(mc, layout, *params, dir, dtype, size_t(o.shard_mb) << 20);
  // The tokenizer's files, its chat template and the base model's generation settings, as the
  // run's own export has them.
  if (st.ok()) st = CopyExportFiles(tokenizer, o.base.empty() ? base_model : o.base, dir);
  std::error_code ec;
  if (st.ok() && fresh && !fs::remove(fs::path(dir) / kConvertingMark, ec))
    st = Status::Error(dir + ": cannot remove " + kConvertingMark + ": " + ec.message());
  if (st.ok() && fresh) st = SwapInDirectory(dir, out.string());
  if (!st.ok() && fresh) fs::remove_all(dir, ec);
  if (!st.ok()) return st.With("convert to " + out.string());
  if (!o.adapter_out.empty())  // (the adapters stay in the slab); its lora_dropout: the run's
    XT_RETURN_IF_ERROR(SaveLoraAdapter(mc, layout, params->slab(), o.adapter_out, base_model));
  std::printf("converted %s -> %s (%s%s)\n", o.checkpoint.c_str(), o.out.c_str(), o.dtype.c_str(),
              tokenizer.empty() ? ", no tokenizer found: pass --tokenizer" : ", with tokenizer");
  return Status::OK();
}

}  // namespace

void AddConvert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "Turn a training checkpoint into a Hugging Face model");
  static ConvertArgs o;
  cmd->add_option("--checkpoint", o.checkpoint, "work_dir/checkpoints/step-N")->required();
  cmd->add_option("--out", o.out, "output directory")->required();
  cmd->add_option("--dtype", o.dtype,
                  "bf16, fp32 or fp8 (block-quantized, as the hub's -FP8 checkpoints)")
      ->capture_default_str();
  cmd->add_option("--tokenizer", o.tokenizer, "tokenizer.json (default: the run's)");
  cmd->add_option("--shard-mb", o.shard_mb, "largest shard, MB")->capture_default_str();
  cmd->add_option("--base", o.base,
                  "a LoRA run's base model, where it is now (default: the path the run recorded; "
                  "its weights must be the same)");
  cmd->add_option("--adapter-out", o.adapter_out,
                  "a LoRA run: also write its adapter here (PEFT's adapter_config.json and "
                  "adapter_model.safetensors)");
  cmd->callback([] { Finish(RunConvert(o)); });
}

}  // namespace xt::cli
