// xtuner plan --model CONFIG.json --seq N [--world W] [--ep E] [--recompute F]
//              [--micro-batch-size B] [--precision fp32|bf16] [--device cpu|cuda]
//              [--gpu-memory GiB] [--lora-rank R [--lora-targets T] [--lora-dropout P]
//              [--lora-target-parameters P]] [--cuda-frozen-weights auto|fp32] [--row]
// Memory per rank and FLOPs per token of a training run, on paper (src/xtuner/plan/plan.h).
#include "xtuner/plan/plan.h"

#include <cstdio>

#include "cli/commands.h"
#include "xtuner/model/lora.h"

namespace xt::cli {

namespace {

struct PlanArgs {
  std::string model, precision = "fp32", device = "cpu", lora_targets = "auto";
  std::string frozen_weights = "auto";
  std::string lora_target_parameters;
  int64_t lora_rank = 0;
  double lora_dropout = 0;
  PlanInputs in;
  bool row = false, header = false;
};

Status RunPlan(PlanArgs o) {
  XT_ASSIGN_OR_RETURN(o.in.model, ModelConfig::Load(o.model));
  if (o.lora_rank == 0 && (o.lora_dropout != 0 || o.lora_targets != PlanArgs().lora_targets ||
                           !o.lora_target_parameters.empty()))
    return Status::Error(
        "plan: --lora-targets, --lora-dropout and --lora-target-parameters need --lora-rank > 0");
  if (o.lora_rank != 0) {  // as a run's [lora]: the targets by name, comma-separated
    LoraSpec spec;
    spec.rank = o.lora_rank;
    spec.alpha = 1;  // the scale does not change the plan
    spec.dropout = o.lora_dropout;
    spec.targets = SplitLoraTargets(o.lora_targets);
    spec.expert_targets = SplitLoraTargets(o.lora_target_parameters);
    XT_ASSIGN_OR_RETURN(o.in.model.lora, ResolveLora(spec, o.in.model, "plan: lora"));
  }
  XT_ASSIGN_OR_RETURN(o.in.precision, ParsePrecision(o.precision));
  XT_ASSIGN_OR_RETURN(o.in.device, ParseDevice(o.device));
  if (o.frozen_weights != "auto" && o.frozen_weights != "fp32")
    return Status::Error("plan: --cuda-frozen-weights must be auto or fp32, not \"" +
                         o.frozen_weights + "\"");
  o.in.frozen_bf16_only = o.frozen_weights == "auto";
  o.in.model_name = o.model;
  XT_ASSIGN_OR_RETURN(PlanReport r, Plan(o.in));
  if (o.row) {
    std::string out = (o.header ? FormatPlanRowHeader() : "") + FormatPlanRow(o.in, r);
    std::fputs(out.c_str(), stdout);
  } else {
    std::fputs(FormatPlan(o.in, r).c_str(), stdout);
  }
  return Status::OK();
}

}  // namespace

void AddPlan(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "plan", "Memory per rank and FLOPs per token of a training run, on paper (no GPU needed)");
  static PlanArgs o;
  cmd->add_option("--model", o.model, "config.json (or a model directory holding one)")->required();
  cmd->add_option("--seq", o.in.seq, "tokens per packed row")->required();
  cmd->add_option("--micro-batch-size", o.in.micro_batch_size,
                  "rows per micro-batch: T = micro-batch-size x seq tokens per rank")
      ->capture_default_str();
  cmd->add_option("--world", o.in.world, "ranks (world = dp x ep)")->capture_default_str();
  cmd->add_option("--ep", o.in.ep, "expert-parallel size: divides world and the experts")
      ->capture_default_str();
  cmd->add_option("--recompute", o.in.recompute, "fraction of layers recomputed, in [0, 1]")
      ->capture_default_str();
  cmd->add_option("--precision", o.precision,
                  "fp32 or bf16 (train.precision: bf16 matmuls, fp32 master state)")
      ->capture_default_str();
  cmd->add_option("--device", o.device,
                  "cpu or cuda (train.device): whose buffers to count; cuda: cuda::CudaModel's")
      ->capture_default_str();
  cmd->add_option("--gpu-memory", o.in.gpu_memory_gib,
                  "memory per rank in GiB for a fits / does-not-fit verdict (H200: 141)");
  CLI::Option* rank =
      cmd->add_option("--lora-rank", o.lora_rank,
                      "LoRA adapters of this rank (lora.rank): only they get gradients and moments")
          ->capture_default_str();
  cmd->add_option("--lora-targets", o.lora_targets, "lora.target_modules, with --lora-rank")
      ->capture_default_str()
      ->needs(rank);
  cmd->add_option("--lora-dropout", o.lora_dropout,
                  "lora.dropout, with --lora-rank (each adapter's input is masked in scratch)")
      ->capture_default_str()
      ->needs(rank);
  cmd->add_option("--lora-target-parameters", o.lora_target_parameters,
                  "lora.target_parameters, with --lora-rank: the routed experts' weights "
                  "(mlp.experts.gate_up_proj,mlp.experts.down_proj)")
      ->needs(rank);
  cmd->add_option("--cuda-frozen-weights", o.frozen_weights,
                  "train.cuda_frozen_weights: auto (a LoRA run in bf16 on GPUs holds its "
                  "frozen matmul weights in bf16 only) or fp32")
      ->capture_default_str();
  cmd->add_flag("--row", o.row, "print one Markdown table row instead of the report");
  cmd->add_flag("--header", o.header, "with --row: print the table header first");
  cmd->callback([] { Finish(RunPlan(o)); });
}

}  // namespace xt::cli
