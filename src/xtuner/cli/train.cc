// xtuner train CONFIG.toml [--set section.key=value ...]
// xtuner sft --load-from DIR --dataset FILE [...] --chat-template NAME --work-dir DIR [...]
// Both build a TrainConfig and run it; Ctrl-C (or SIGTERM) saves a checkpoint and exits cleanly.
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "cli/stop_signals.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/node_cpus.h"
#include "xtuner/train/trainer.h"

namespace xt::cli {

namespace {

Status RunTrain(TrainConfig cfg, const std::vector<std::string>& overrides) {
  for (const std::string& o : overrides) XT_RETURN_IF_ERROR(ApplyOverride(o, &cfg));
  XT_RETURN_IF_ERROR(ValidateTrainConfig(cfg));
  // Under mpirun or srun every rank runs this; rank 0 prints. An error on any rank ends the whole
  // job at once, naming the rank (the others may be waiting for it in a collective).
  // Ctrl-C and SIGTERM: a checkpoint and a clean exit. Blocked before MPI starts its threads,
  // which inherit the mask (else the signal may land on one of them and kill the rank).
  ClearStopRequest();
  StopSignals stop(RequestStop);
  std::unique_ptr<Comm> world = MakeWorldComm();
  ChooseCpuThreads();  // without OMP_NUM_THREADS: the node's CPUs shared among its ranks
  Result<TrainResult> result = RunTraining(cfg, world->rank() == 0 ? stdout : nullptr, world.get());
  if (!result.ok() && world->size() > 1) {
    std::fflush(stdout);
    world->Abort("error: " + result.status().message());
  }
  if (!result.ok()) return result.status();
  if (world->rank() != 0) return Status::OK();
  std::printf("done: %lld steps", (long long)result->steps_done);
  if (std::isfinite(result->last_loss)) std::printf(", last loss %.4f", result->last_loss);
  std::printf(", checkpoint %s", result->last_checkpoint.c_str());
  if (!result->export_dir.empty()) std::printf(", export %s", result->export_dir.c_str());
  std::printf("\n");
  return Status::OK();
}

}  // namespace

void AddTrain(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train from a TOML config (keys: docs/config.md)");
  static std::string config;
  static std::vector<std::string> sets;
  static bool reference = false;
  cmd->add_option("config", config, "training config (.toml)");
  cmd->add_option("--set", sets, "override a key: section.key=value (repeatable)");
  static std::string resume;
  cmd->add_option("--resume", resume, "auto (the latest checkpoint in work_dir) or a checkpoint");
  cmd->add_flag("--config-reference", reference, "print every config key as Markdown and exit");
  cmd->callback([] {
    if (reference) {
      std::fputs(ConfigReferenceMarkdown().c_str(), stdout);
      return;
    }
    if (config.empty())
      return Finish(Status::Error("train: give a config file (see docs/config.md)"));
    TrainConfig cfg;
    Status st = LoadTrainConfig(config, &cfg);
    if (!resume.empty()) cfg.resume = resume;
    Finish(st.ok() ? RunTrain(cfg, sets) : st);
  });
}

void AddSft(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "sft", "Supervised fine-tuning of a Hugging Face checkpoint on chat JSONL, no config file");
  static TrainConfig cfg;
  static std::vector<std::string> datasets, sets;
  cmd->add_option("--load-from", cfg.load_from, "Hugging Face model directory")->required();
  cmd->add_option("--dataset", datasets, "chat JSONL (repeatable)")->required();
  cmd->add_option("--chat-template", cfg.chat_template,
                  "chatml|qwen3|llama3|llama3.1|deepseek-v3|harmony|auto")
      ->required();
  cmd->add_option("--work-dir", cfg.work_dir, "output directory")->required();
  cmd->add_option("--tokenizer", cfg.tokenizer,
                  "tokenizer.json, or a directory holding one (default: DIR/tokenizer.json)");
  cmd->add_option("--steps", cfg.steps, "optimizer steps")->capture_default_str();
  cmd->add_option("--lr", cfg.lr, "peak learning rate")->capture_default_str();
  cmd->add_option("--max-length", cfg.max_length, "tokens per packed row")->capture_default_str();
  cmd->add_option("--global-batch-size", cfg.global_batch_size,
                  "rows per optimizer step, over all ranks")
      ->capture_default_str();
  cmd->add_option("--seed", cfg.seed, "seed")->capture_default_str();
  cmd->add_option("--lora-rank", cfg.lora_rank,
                  "0: train every parameter; > 0: LoRA adapters of this rank on "
                  "lora.target_modules (default auto: every linear layer of a dense model, the "
                  "attention of an MoE one); LoRA wants a larger --lr, e.g. 1e-4 (docs/lora.md)")
      ->capture_default_str();
  cmd->add_option("--lora-dropout", cfg.lora_dropout,
                  "lora.dropout, with --lora-rank: PEFT's lora_dropout, in [0, 1)")
      ->capture_default_str();
  cmd->add_option("--lora-target-parameters", cfg.lora_target_parameters,
                  "lora.target_parameters, with --lora-rank: PEFT's target_parameters on the "
                  "routed experts, e.g. mlp.experts.gate_up_proj,mlp.experts.down_proj");
  cmd->add_option("--set", sets, "override any config key: section.key=value (repeatable)");
  cmd->add_option("--resume", cfg.resume, "auto (the latest checkpoint in the work dir) or a path");
  cmd->callback([] {
    cfg.datasets.clear();
    for (const std::string& d : datasets) cfg.datasets.push_back({d, 1.0, "chat"});
    Finish(RunTrain(cfg, sets));
  });
}

}  // namespace xt::cli
