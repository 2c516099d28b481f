// TrainConfig: everything `xtuner train config.toml` and `xtuner sft` take. Every key is
// declared once in a schema (config.cc) that parses the TOML file, applies `--set key=value`
// overrides, rejects unknown keys (with a suggestion) and wrong types (with the key's path), and
// prints docs/config.md, so the reference cannot drift from the code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/model/config.h"

namespace xt {

struct DatasetConfig {
  std::string path;
  double ratio = 1.0;         // < 1 takes a part of the file, > 1 repeats it
  std::string kind = "auto";  // auto | chat | text
};

struct TrainConfig {
  std::string work_dir = "work_dir";

  // [model]
  std::string load_from;     // HF model directory: config.json + safetensors weights
  std::string model_config;  // or a config.json alone: random initialisation
  double initializer_range = 0.02;
  double recompute = 0.0;  // fraction of layers whose activations are recomputed

  // [data]
  std::vector<DatasetConfig> datasets;
  std::string tokenizer;  // default: <load_from or model_config's dir>/tokenizer.json
  std::string chat_template = "auto";
  // The harmony template's options (data/chat_template.h ChatTemplateOptions); "": its default.
  std::string reasoning_effort;
  std::string model_identity;
  std::string current_date;
  int64_t max_length = 2048;
  std::string on_bad_sample = "error";  // error | skip
  std::string overlong = "truncate";    // truncate | drop
  bool train_last_turn_only = false;

  // [train]
  int64_t steps = 100;
  int64_t global_batch_size = 8;  // rows of max_length tokens per optimizer step, all ranks
  int64_t micro_batch_size = 1;   // rows per forward/backward
  int64_t seed = 42;
  std::string precision = "fp32";  // fp32 | bf16 (matmul inputs; accumulation and state fp32)
  std::string device = "cpu";      // cpu | cuda (train/backend.h)
  // train.device = "cuda" only (auto: the engine's choice): the bf16 attention's kernels, and how
  // the experts' products run (cuda/attention_bf16.h, cuda/gemm_cuda.h).
  std::string cuda_attention = "auto";       // auto | wmma | mma
  std::string cuda_experts_gemm = "auto";    // auto | cublas-grouped | xtuner-grouped | per-expert
  std::string cuda_frozen_weights = "auto";  // auto | fp32
  // MoE balancing loss over the global batch (any mesh, any micro-batch size: the same loss) or
  // transformers' loss of each micro-batch, averaged.
  std::string aux_loss_scope = "global_batch";  // global_batch | micro_batch
  // Models with a router correction bias (DeepSeek-V3): its move per step (train/router_bias.h).
  double router_bias_update_speed = 0.001;
  double aux_loss_coef = -1;  // < 0: config.json's router_aux_loss_coef

  // [lora] (model/lora.h): rank 0 trains every parameter; rank > 0 freezes them all and trains
  // LoRA adapters on target_modules (comma-separated PEFT names, all-linear or auto).
  int64_t lora_rank = 0;
  double lora_alpha = 16.0;
  std::string lora_target_modules = "auto";
  std::string lora_target_parameters;  // the routed experts' weights ("": none)
  bool lora_rslora = false;
  double lora_dropout = 0.0;  // in [0, 1)
  std::string lora_adapter;   // a PEFT adapter to start from ("": PEFT's initialisation)

  // [optim]
  double lr = 1e-5;
  double min_lr = 0.0;
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double clip_grad_norm = 1.0;  // 0 disables clipping
  int64_t max_nonfinite_steps = 5;

  // [schedule]
  std::string schedule = "cosine";  // cosine | linear | constant
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;

  // [parallel]
  int64_t ep = 1;  // expert-parallel ranks; data parallel over the rest: dp = world / ep
  std::string gpu_comm = "nccl";  // nccl | mpi: how GPU ranks exchange device buffers

  // [checkpoint]
  int64_t checkpoint_every = 0;  // 0: only at the end (and on Ctrl-C)
  int64_t keep_last = 2;
  std::string resume;  // "" | auto | PATH

  // [export]
  int64_t export_every = 0;
  bool export_at_end = true;
  std::string export_dtype = "bf16";  // bf16 | fp32 | fp8
  int64_t export_shard_mb = 5000;

  // [log]
  int64_t log_every = 1;
  bool tensorboard = true;
  double peak_tflops = 0.0;  // for MFU; 0 = measure nothing against a peak

  // [eval]
  std::string eval_file;  // JSONL of {"prompt": ..., "answer": ...} checked after training
  int64_t eval_max_new_tokens = 32;
};

// Parses a TOML file into `cfg` (keys not in the file keep their defaults).
Status LoadTrainConfig(const std::string& path, TrainConfig* cfg);
// Parses TOML text; `source` names it in errors.
Status ParseTrainConfig(const std::string& text, const std::string& source, TrainConfig* cfg);
// Applies one `section.key=value` override (value in TOML syntax; a bare word is a string).
Status ApplyOverride(const std::string& assignment, TrainConfig* cfg);
// Cross-key checks (required keys, ranges, one of load_from/model_config).
Status ValidateTrainConfig(const TrainConfig& cfg);
// The reference of every key, as Markdown (docs/config.md).
std::string ConfigReferenceMarkdown();
// The effective configuration as TOML (written to the work dir for reproducibility).
std::string ConfigToToml(const TrainConfig& cfg);

// The run's [lora] as the model takes it (before ResolveLora checks and expands it).
LoraSpec LoraSpecOf(const TrainConfig& c);

}  // namespace xt
