#include "xtuner/train/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <variant>

#include "xtuner/core/file_util.h"
#include "xtuner/core/utf8.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"

namespace xt {

namespace {

using Member = std::variant<int64_t TrainConfig::*, double TrainConfig::*, bool TrainConfig::*,
                            std::string TrainConfig::*>;

struct Key {
  const char* path;
  Member member;
  const char* doc;
};

// The schema: every key, its field and its documentation, in the order of docs/config.md.
const std::vector<Key>& Schema() {
  using C = TrainConfig;
  static const std::vector<Key> keys = {
      {"work_dir", &C::work_dir, "Directory for checkpoints, exports, metrics.jsonl, TensorBoard."},
      {"model.load_from", &C::load_from,
       "Hugging Face model directory (config.json + safetensors) to start from."},
      {"model.model_config", &C::model_config,
       "A config.json alone: the model starts from random weights (instead of load_from)."},
      {"model.initializer_range", &C::initializer_range,
       "Standard deviation of the random initialisation (model_config only)."},
      {"model.recompute", &C::recompute,
       "Fraction of layers (from the first) whose activations are recomputed in the backward "
       "(round(fraction x layers) of them). `xtuner plan` names the least that fits a memory; "
       "the run checks its largest micro-batch before the first step and, where it cannot fit, "
       "names it (train.device = \"cuda\": an error; cpu: a warning)."},
      {"data.tokenizer", &C::tokenizer,
       "tokenizer.json, or a directory holding one (a Hugging Face model's); default: "
       "tokenizer.json beside the model's config.json."},
      {"data.chat_template", &C::chat_template,
       "chatml | qwen3 | llama3 | llama3.1 | deepseek-v3 | harmony (GPT-OSS) | auto (recognised "
       "from tokenizer_config.json)."},
      {"data.reasoning_effort", &C::reasoning_effort,
       "harmony only: low | medium | high, the system message's \"Reasoning:\" (\"\": medium)."},
      {"data.model_identity", &C::model_identity,
       "harmony only: the system message's first line (\"\": \"You are ChatGPT, a large "
       "language model trained by OpenAI.\")."},
      {"data.current_date", &C::current_date,
       "harmony only: the system message's \"Current date:\", YYYY-MM-DD. \"\": the day the "
       "tokenized cache is built (transformers renders the day of each call); a resumed run "
       "reuses the cache and so its date. Give a date for tokens that are the same on any day."},
      {"data.max_length", &C::max_length, "Tokens per packed row."},
      {"data.on_bad_sample", &C::on_bad_sample,
       "error: a malformed line stops the run before training; skip: skip and count it."},
      {"data.overlong", &C::overlong,
       "A sample longer than max_length is truncated or dropped (and counted)."},
      {"data.train_last_turn_only", &C::train_last_turn_only,
       "Train only on the last assistant turn of each conversation."},
      {"train.steps", &C::steps, "Optimizer steps."},
      {"train.global_batch_size", &C::global_batch_size,
       "Rows of max_length tokens per optimizer step, over all ranks."},
      {"train.micro_batch_size", &C::micro_batch_size,
       "Rows per forward/backward; gradients accumulate over the global batch."},
      {"train.seed", &C::seed,
       "Seed of the data order, the random initialisation and LoRA's dropout masks."},
      {"train.precision", &C::precision,
       "fp32 | bf16: bf16 rounds every matmul's inputs (fp32 sums, AMX / AVX-512 BF16 through "
       "oneDNN; on a CPU without them the rounded inputs through fp32 sgemm, the same products); "
       "weights, gradients and AdamW stay fp32."},
      {"train.device", &C::device,
       "cpu | cuda: where the step runs. cuda: one GPU per process (under mpirun the GPU of the "
       "local rank), parameters, gradients and AdamW state on the GPU, copied back for "
       "checkpoints and exports; several ranks shard them as on the CPU (ZeRO-3 over NCCL: units "
       "gathered, gradients reduce-scattered; parallel.ep > 1 sends the experts' rows all-to-all). "
       "Runs every model_type, LoRA runs too. Needs a build with CUDA."},
      {"train.cuda_attention", &C::cuda_attention,
       "auto | wmma | mma: the kernels of train.device = \"cuda\"'s bf16 attention. wmma: scores "
       "through shared memory; mma: FlashAttention-2 style, scores and softmax in registers. "
       "auto: the engine's default (wmma until GPU measurements say otherwise; bench/gpu_moe.sh "
       "times both)."},
      {"train.cuda_experts_gemm", &C::cuda_experts_gemm,
       "auto | cublas-grouped | xtuner-grouped | per-expert: how train.device = \"cuda\" runs the "
       "experts' products. auto: cuBLAS's grouped GEMM where it takes the types, else "
       "xtuner's grouped kernel (bf16) or one GEMM per expert (fp32). xtuner-grouped needs "
       "train.precision = \"bf16\"."},
      {"train.cuda_frozen_weights", &C::cuda_frozen_weights,
       "auto | fp32: how train.device = \"cuda\" holds a LoRA run's frozen weights. auto: a LoRA "
       "run in bf16 holds those that enter matmuls only (the projections, the experts, an "
       "untied lm_head) in bf16 only, without their fp32 copy (the same arithmetic: bf16 "
       "matmuls read them rounded): one GPU 2 bytes a parameter instead of 6, several 2 instead "
       "of 4 in their shards (widened as a unit is gathered); fp32: keeps the fp32 copy too. "
       "Other runs hold every weight in fp32."},
      {"train.aux_loss_scope", &C::aux_loss_scope,
       "MoE balancing loss. global_batch: the loss of the whole global batch (router statistics "
       "pooled over micro-batches and ranks), the same for any mesh and micro_batch_size; a rank "
       "with more than one micro-batch per step first runs its micro-batches' router forward "
       "(decoder layers only) to pool them. micro_batch: transformers' loss of each micro-batch, "
       "averaged; no extra forward, but it changes with the mesh and micro_batch_size."},
      {"train.aux_loss_coef", &C::aux_loss_coef,
       "The balancing loss's weight in the loss (softmax routers). -1: config.json's "
       "router_aux_loss_coef, which transformers applies only when output_router_logits is set "
       "(GPT-OSS's hub config says 0.9, Qwen3-MoE's 0.001). 0: no balancing loss."},
      {"train.router_bias_update_speed", &C::router_bias_update_speed,
       "Auxiliary-loss-free balancing, for models whose router has a correction bias "
       "(DeepSeek-V3; ignored by the others): after every step each MoE layer's "
       "e_score_correction_bias moves by this much towards balance (+ for an expert that got fewer "
       "tokens than the mean, - for one that got more; DeepSeek-V3's report uses 0.001). 0 keeps "
       "the bias as loaded."},
      {"lora.rank", &C::lora_rank,
       "0: train every parameter. > 0: freeze them all and train LoRA adapters of this rank on "
       "lora.target_modules, as PEFT does (exports are merged; the adapter is written beside: "
       "docs/lora.md)."},
      {"lora.alpha", &C::lora_alpha, "The adapters' scale is alpha / rank (PEFT's lora_alpha)."},
      {"lora.target_modules", &C::lora_target_modules,
       "Comma-separated layer names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
       "down_proj; DeepSeek-V3: q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj), "
       "all-linear, or auto: every linear layer of a dense model, the attention projections of "
       "one with routed experts (whose experts take adapters through lora.target_parameters)."},
      {"lora.target_parameters", &C::lora_target_parameters,
       "PEFT's target_parameters: the routed experts' stacked weights to adapt, "
       "comma-separated: mlp.experts.gate_up_proj, mlp.experts.down_proj (or their last one or "
       "two parts) for every MoE layer's, 7.mlp.experts.down_proj for layer 7's; one adapter of "
       "rank lora.rank per expert (Qwen3-MoE, Mixtral, DeepSeek-V3, GPT-OSS). \"\": the experts "
       "take none."},
      {"lora.rslora", &C::lora_rslora, "Rank-stabilised LoRA: the scale is alpha / sqrt(rank)."},
      {"lora.dropout", &C::lora_dropout,
       "PEFT's lora_dropout: the probability that an element of an adapter's input is dropped "
       "in training (the kept ones scaled by 1 / (1 - dropout)); masks drawn from train.seed, "
       "the step and each token's place in the global batch, the same on any mesh."},
      {"lora.adapter", &C::lora_adapter,
       "A PEFT adapter directory to start from (its r, lora_alpha, use_rslora must match); "
       "\"\": A uniform, B zero, as PEFT initialises them."},
      {"optim.lr", &C::lr, "Peak learning rate."},
      {"optim.min_lr", &C::min_lr, "Floor the schedule decays to."},
      {"optim.weight_decay", &C::weight_decay,
       "AdamW decoupled weight decay (never on norm weights)."},
      {"optim.beta1", &C::beta1, "AdamW beta1."},
      {"optim.beta2", &C::beta2, "AdamW beta2."},
      {"optim.eps", &C::eps, "AdamW epsilon."},
      {"optim.clip_grad_norm", &C::clip_grad_norm,
       "Clip the global gradient L2 norm to this; 0 disables clipping."},
      {"optim.max_nonfinite_steps", &C::max_nonfinite_steps,
       "Steps with a NaN/Inf gradient are skipped; this many in a row stop the run."},
      {"schedule.type", &C::schedule, "cosine | linear | constant (after the warm-up)."},
      {"schedule.warmup_steps", &C::warmup_steps, "Linear warm-up steps."},
      {"schedule.warmup_ratio", &C::warmup_ratio,
       "Warm-up as a fraction of train.steps (used when warmup_steps is 0)."},
      {"parallel.ep", &C::ep,
       "Expert-parallel ranks (under mpirun): each holds experts / ep of every MoE layer; "
       "dp = ranks / ep."},
      {"parallel.gpu_comm", &C::gpu_comm,
       "nccl | mpi: how train.device = \"cuda\" ranks exchange parameters, gradients and expert "
       "rows. mpi copies them through host memory for MPI (slower): ranks may then share a GPU "
       "(e.g. to test a mesh on one GPU), and no NCCL is needed."},
      {"checkpoint.every", &C::checkpoint_every,
       "Save a resumable checkpoint every N steps (0: only at the end and on Ctrl-C)."},
      {"checkpoint.keep_last", &C::keep_last, "Checkpoints kept; older ones are deleted."},
      {"checkpoint.resume", &C::resume,
       "\"\" starts fresh; \"auto\" resumes from the latest checkpoint in work_dir; or a path."},
      {"export.every", &C::export_every, "Write a Hugging Face export every N steps (0: never)."},
      {"export.at_end", &C::export_at_end, "Write a Hugging Face export when training ends."},
      {"export.dtype", &C::export_dtype,
       "bf16 | fp32 | fp8 weights in the export (fp8: the linear weights block-quantized, as "
       "in the hub's -FP8 checkpoints)."},
      {"export.shard_mb", &C::export_shard_mb, "Largest safetensors shard of an export, in MB."},
      {"log.every", &C::log_every, "Print a line every N steps when not on a terminal."},
      {"log.tensorboard", &C::tensorboard, "Write a TensorBoard event file in work_dir/tb."},
      {"log.peak_tflops", &C::peak_tflops,
       "Peak TFLOP/s of the hardware, for MFU (0: report no MFU)."},
      {"eval.file", &C::eval_file,
       "JSONL of {\"prompt\", \"answer\"}, checked before training (every rank reads it); "
       "after training, greedy answers are scored."},
      {"eval.max_new_tokens", &C::eval_max_new_tokens, "Tokens generated per eval prompt."},
  };
  return keys;
}

const char* TypeName(const Member& m) {
  switch (m.index()) {
    case 0:
      return "an integer";
    case 1:
      return "a number";
    case 2:
      return "true or false";
    default:
      return "a string";
  }
}

std::string Describe(const toml::node& n) {
  std::ostringstream os;
  if (n.is_string()) {
    os << "string \"" << n.as_string()->get() << "\"";
  } else if (n.is_table()) {
    os << "a table";
  } else if (n.is_array()) {
    os << "an array";
  } else {
    n.visit([&](const auto& v) { os << v; });
  }
  return os.str();
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    prev.swap(cur);
  }
  return prev[b.size()];
}

// Names other tools use for our keys (HF TrainingArguments, XTuner, Megatron).
const char* Alias(const std::string& leaf) {
  static const std::pair<const char*, const char*> kAliases[] = {
      {"learning_rate", "optim.lr"},
      {"lr_min", "optim.min_lr"},
      {"max_grad_norm", "optim.clip_grad_norm"},
      {"grad_clip", "optim.clip_grad_norm"},
      {"clip_grad", "optim.clip_grad_norm"},
      {"adam_beta1", "optim.beta1"},
      {"adam_beta2", "optim.beta2"},
      {"adam_epsilon", "optim.eps"},
      {"max_steps", "train.steps"},
      {"total_steps", "train.steps"},
      {"train_iters", "train.steps"},
      {"batch_size", "train.global_batch_size"},
      {"global_batch", "train.global_batch_size"},
      {"micro_batch", "train.micro_batch_size"},
      {"output_dir", "work_dir"},
      {"model_name_or_path", "model.load_from"},
      {"pretrained", "model.load_from"},
      {"max_seq_len", "data.max_length"},
      {"max_seq_length", "data.max_length"},
      {"seq_length", "data.max_length"},
      {"pack_max_length", "data.max_length"},
      {"lr_scheduler_type", "schedule.type"},
      {"warmup", "schedule.warmup_steps"},
      {"save_steps", "checkpoint.every"},
      {"lora_r", "lora.rank"},
      {"r", "lora.rank"},
      {"lora_alpha", "lora.alpha"},
      {"lora_dropout", "lora.dropout"},
      {"use_rslora", "lora.rslora"},
      {"save_total_limit", "checkpoint.keep_last"},
      {"logging_steps", "log.every"},
      {"gradient_checkpointing", "model.recompute"},
      {"recompute_ratio", "model.recompute"},
  };
  for (const auto& [name, key] : kAliases)
    if (leaf == name) return key;
  return nullptr;
}

// "unknown key 'x' (did you mean 'y'?)" with the closest known key, or the list of a section's.
std::string UnknownKey(const std::string& path) {
  if (const char* key = Alias(path.substr(path.rfind('.') + 1)))
    return "unknown key '" + path + "' (did you mean '" + key +
           "'?); see docs/config.md for every key";
  std::string best;
  size_t best_d = SIZE_MAX;
  std::vector<std::string> all;
  for (const Key& k : Schema()) all.push_back(k.path);
  all.push_back("data.datasets");
  for (const std::string& k : all) {
    size_t d = EditDistance(path, k);
    const std::string leaf = k.substr(k.rfind('.') + 1);
    if (path.size() >= leaf.size() && path.substr(path.size() - leaf.size()) == leaf)
      d = std::min<size_t>(d, 2);
    if (d < best_d) best_d = d, best = k;
  }
  std::string msg = "unknown key '" + path + "'";
  if (best_d <= std::max<size_t>(3, path.size() / 3)) msg += " (did you mean '" + best + "'?)";
  return msg + "; see docs/config.md for every key";
}

Status SetKey(const Key& key, const toml::node& n, const std::string& where, TrainConfig* cfg) {
  auto bad = [&] {
    return Status::Error(where + ": " + key.path + " must be " + TypeName(key.member) + ", found " +
                         Describe(n));
  };
  switch (key.member.index()) {
    case 0:
      if (!n.is_integer()) return bad();
      cfg->*std::get<0>(key.member) = n.as_integer()->get();
      break;
    case 1:
      if (n.is_integer()) {
        cfg->*std::get<1>(key.member) = double(n.as_integer()->get());
      } else if (n.is_floating_point()) {
        cfg->*std::get<1>(key.member) = n.as_floating_point()->get();
      } else {
        return bad();
      }
      break;
    case 2:
      if (!n.is_boolean()) return bad();
      cfg->*std::get<2>(key.member) = n.as_boolean()->get();
      break;
    default:
      if (n.is_date() && std::string(key.path) == "data.current_date") {  // TOML's 2025-08-05
        const toml::date d = n.as_date()->get();
        char buf[16];
        std::snprintf(buf, sizeof buf, "%04d-%02d-%02d", int(d.year), int(d.month), int(d.day));
        cfg->*std::get<3>(key.member) = buf;
        break;
      }
      if (!n.is_string()) return bad();
      cfg->*std::get<3>(key.member) = n.as_string()->get();
  }
  return Status::OK();
}

// data.datasets: an array of tables {path, ratio, kind}.
Status SetDatasets(const toml::node& n, const std::string& where, TrainConfig* cfg) {
  const toml::array* arr = n.as_array();
  if (!arr)
    return Status::Error(where +
                         ": data.datasets must be an array of tables "
                         "([[data.datasets]] with path = ...), found " +
                         Describe(n));
  cfg->datasets.clear();
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string item = "data.datasets[" + std::to_string(i) + "]";
    const toml::table* t = (*arr)[i].as_table();
    if (!t) return Status::Error(where + ": " + item + " must be a table with path = ...");
    DatasetConfig d;
    for (const auto& [k, v] : *t) {
      const std::string key(k.str());
      if (key == "path" && v.is_string()) {
        d.path = v.as_string()->get();
      } else if (key == "ratio" && (v.is_floating_point() || v.is_integer())) {
        d.ratio = v.is_integer() ? double(v.as_integer()->get()) : v.as_floating_point()->get();
      } else if (key == "kind" && v.is_string()) {
        d.kind = v.as_string()->get();
      } else if (key == "path" || key == "ratio" || key == "kind") {
        return Status::Error(where + ": " + item + "." + key +
                             " has the wrong type: " + Describe(v));
      } else {
        return Status::Error(where + ": unknown key '" + item + "." + key +
                             "' (a dataset has path, ratio, kind)");
      }
    }
    if (d.path.empty()) return Status::Error(where + ": " + item + " has no path");
    cfg->datasets.push_back(d);
  }
  return Status::OK();
}

const Key* FindKey(const std::string& path) {
  for (const Key& k : Schema())
    if (path == k.path) return &k;
  return nullptr;
}

Status Apply(const std::string& path, const toml::node& n, const std::string& where,
             TrainConfig* cfg) {
  if (path == "data.datasets") return SetDatasets(n, where, cfg);
  if (const Key* k = FindKey(path)) return SetKey(*k, n, where, cfg);
  if (const toml::table* t = n.as_table()) {
    for (const auto& [k, v] : *t) {
      const std::string child =
          path.empty() ? std::string(k.str()) : path + "." + std::string(k.str());
      XT_RETURN_IF_ERROR(Apply(child, v, where, cfg));
    }
    return Status::OK();
  }
  return Status::Error(where + ": " + UnknownKey(path));
}

}  // namespace

Status ParseTrainConfig(const std::string& text, const std::string& source, TrainConfig* cfg) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << source << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
       << e.description();
    return Status::Error(os.str());
  }
  return Apply("", root, source, cfg);
}

Status LoadTrainConfig(const std::string& path, TrainConfig* cfg) {
  XT_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  return ParseTrainConfig(text, path, cfg);
}

Status ApplyOverride(const std::string& assignment, TrainConfig* cfg) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    return Status::Error("--set " + assignment + ": expected section.key=value");
  const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  const std::string where = "--set " + assignment;
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {  // a bare word: take it as a string
    parsed = toml::table{{"v", value}};
  }
  if (path != "data.datasets" && !FindKey(path))
    return Status::Error(where + ": " + UnknownKey(path));
  return Apply(path, *parsed.get("v"), where, cfg);
}

Status ValidateTrainConfig(const TrainConfig& c) {
  auto err = [](const std::string& m) { return Status::Error("config: " + m); };
  if (c.load_from.empty() == c.model_config.empty())
    return err(
        "set exactly one of model.load_from (a Hugging Face model directory) and "
        "model.model_config (a config.json for random initialisation)");
  if (c.datasets.empty()) return err("no data.datasets given");
  const ChatTemplateOptions harmony{c.reasoning_effort, c.model_identity, c.current_date};
  XT_RETURN_IF_ERROR(harmony.Check("data.").With("config"));
  // Paths are written into config.toml, trainer_state.json and adapter_config.json (as text,
  // which must be UTF-8); a stray byte would come back as another path.
  std::vector<std::pair<std::string, const std::string*>> paths = {
      {"work_dir", &c.work_dir},
      {"model.load_from", &c.load_from},
      {"model.model_config", &c.model_config},
      {"data.tokenizer", &c.tokenizer},
      {"lora.adapter", &c.lora_adapter},
      {"eval.file", &c.eval_file},
      {"checkpoint.resume", &c.resume}};
  for (size_t i = 0; i < c.datasets.size(); ++i)
    paths.push_back({"data.datasets[" + std::to_string(i) + "].path", &c.datasets[i].path});
  for (const auto& [key, path] : paths)
    if (size_t at = FindInvalidUtf8(*path); at != std::string::npos)
      return err(key + " is not valid UTF-8 (byte " + std::to_string(at + 1) +
                 "): xtuner writes its paths into JSON and TOML files");
  for (const DatasetConfig& d : c.datasets) {
    if (!(d.ratio > 0)) return err("dataset " + d.path + ": ratio must be > 0");
    if (d.kind != "auto" && d.kind != "chat" && d.kind != "text")
      return err("dataset " + d.path + ": kind must be auto, chat or text, not " + d.kind);
  }
  if (c.max_length < 2) return err("data.max_length must be at least 2");
  if (c.on_bad_sample != "error" && c.on_bad_sample != "skip")
    return err("data.on_bad_sample must be error or skip, not " + c.on_bad_sample);
  if (c.precision != "fp32" && c.precision != "bf16")
    return err("train.precision must be fp32 or bf16, not \"" + c.precision + "\"");
  if (c.device != "cpu" && c.device != "cuda")
    return err("train.device must be cpu or cuda, not \"" + c.device + "\"");
  if (c.cuda_attention != "auto" && c.cuda_attention != "wmma" && c.cuda_attention != "mma")
    return err("train.cuda_attention must be auto, wmma or mma, not \"" + c.cuda_attention + "\"");
  if (c.cuda_experts_gemm != "auto" && c.cuda_experts_gemm != "cublas-grouped" &&
      c.cuda_experts_gemm != "xtuner-grouped" && c.cuda_experts_gemm != "per-expert")
    return err(
        "train.cuda_experts_gemm must be auto, cublas-grouped, xtuner-grouped or per-expert, not "
        "\"" +
        c.cuda_experts_gemm + "\"");
  if (c.cuda_frozen_weights != "auto" && c.cuda_frozen_weights != "fp32")
    return err("train.cuda_frozen_weights must be auto or fp32, not \"" + c.cuda_frozen_weights +
               "\"");
  if (c.device != "cuda" && (c.cuda_attention != "auto" || c.cuda_experts_gemm != "auto" ||
                             c.cuda_frozen_weights != "auto"))
    return err(std::string(c.cuda_attention != "auto"      ? "train.cuda_attention"
                           : c.cuda_experts_gemm != "auto" ? "train.cuda_experts_gemm"
                                                           : "train.cuda_frozen_weights") +
               " is for train.device = \"cuda\" (train.device is \"" + c.device + "\")");
  if (c.cuda_attention != "auto" && c.precision != "bf16")
    return err(
        "train.cuda_attention picks the bf16 attention's kernels: it needs "
        "train.precision = \"bf16\"");
  if (c.cuda_experts_gemm == "xtuner-grouped" && c.precision != "bf16")
    return err(
        "train.cuda_experts_gemm = \"xtuner-grouped\" is a bf16 kernel: it needs "
        "train.precision = \"bf16\"");
  if (c.gpu_comm != "nccl" && c.gpu_comm != "mpi")
    return err("parallel.gpu_comm must be nccl or mpi, not \"" + c.gpu_comm + "\"");
  if (c.aux_loss_scope != "global_batch" && c.aux_loss_scope != "micro_batch")
    return err("train.aux_loss_scope must be global_batch or micro_batch, not \"" +
               c.aux_loss_scope + "\"");
  if (!(c.aux_loss_coef == -1 || (c.aux_loss_coef >= 0 && std::isfinite(c.aux_loss_coef))))
    return err(
        "train.aux_loss_coef must be -1 (config.json's router_aux_loss_coef) or a finite "
        "value >= 0");
  if (!(c.router_bias_update_speed >= 0 && std::isfinite(c.router_bias_update_speed)))
    return err("train.router_bias_update_speed must be a finite value >= 0");
  if (c.lora_rank < 0) return err("lora.rank must be >= 0 (0: no LoRA)");
  if (c.lora_rank > 0) {
    if (!(c.lora_alpha > 0 && std::isfinite(c.lora_alpha)))
      return err("lora.alpha must be a finite value > 0");
    if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) {
      char v[32];
      std::snprintf(v, sizeof v, "%g", c.lora_dropout);
      return err(std::string("lora.dropout must be in [0, 1) (PEFT's lora_dropout), not ") + v);
    }
    if (c.load_from.empty())
      return err(
          "lora.rank > 0 adapts a trained model: set model.load_from (model.model_config starts "
          "from random weights, which LoRA would leave frozen)");
  } else {
    const TrainConfig d;
    const char* set = c.lora_adapter != d.lora_adapter                 ? "lora.adapter"
                      : c.lora_target_modules != d.lora_target_modules ? "lora.target_modules"
                      : c.lora_target_parameters != d.lora_target_parameters
                          ? "lora.target_parameters"
                      : c.lora_rslora != d.lora_rslora   ? "lora.rslora"
                      : c.lora_alpha != d.lora_alpha     ? "lora.alpha"
                      : c.lora_dropout != d.lora_dropout ? "lora.dropout"
                                                         : nullptr;
    if (set) return err(std::string(set) + " is set but lora.rank is 0 (no LoRA): set lora.rank");
  }
  if (c.overlong != "truncate" && c.overlong != "drop")
    return err("data.overlong must be truncate or drop, not " + c.overlong);
  if (c.steps < 1) return err("train.steps must be at least 1");
  if (c.global_batch_size < 1 || c.micro_batch_size < 1)
    return err("train.global_batch_size and train.micro_batch_size must be at least 1");
  if (c.global_batch_size % c.micro_batch_size != 0)
    return err("train.global_batch_size (" + std::to_string(c.global_batch_size) +
               ") must be a multiple of train.micro_batch_size (" +
               std::to_string(c.micro_batch_size) + ")");
  if (!(c.lr >= 0) || !(c.min_lr >= 0) || c.min_lr > c.lr)
    return err("optim.lr and optim.min_lr must satisfy 0 <= min_lr <= lr");
  if (!(c.recompute >= 0 && c.recompute <= 1)) return err("model.recompute must be in [0, 1]");
  if (Result<ExportDType> d = ParseExportDType(c.export_dtype, "export.dtype"); !d.ok())
    return err(d.status().message());
  if (c.keep_last < 1) return err("checkpoint.keep_last must be at least 1");
  if (c.ep < 1) return err("parallel.ep must be at least 1");
  if (c.log_every < 1) return err("log.every must be at least 1");
  if (c.export_shard_mb < 1) return err("export.shard_mb must be at least 1");
  return Status::OK();
}

std::string ConfigReferenceMarkdown() {
  std::ostringstream os;
  os << "# Training configuration reference\n\n"
        "`xtuner train CONFIG.toml [--set section.key=value ...]` reads these keys; "
        "`xtuner sft` sets the same ones from its flags. Unknown keys and wrong types are errors.\n"
        "Values of `--set` use TOML syntax (`--set optim.lr=3e-4`, "
        "`--set data.chat_template=qwen3`).\n\n"
        "| key | type | default | meaning |\n|---|---|---|---|\n";
  TrainConfig d;
  for (const Key& k : Schema()) {
    std::string def;
    switch (k.member.index()) {
      case 0:
        def = std::to_string(d.*std::get<0>(k.member));
        break;
      case 1: {
        std::ostringstream v;
        v << d.*std::get<1>(k.member);
        def = v.str();
        break;
      }
      case 2:
        def = d.*std::get<2>(k.member) ? "true" : "false";
        break;
      default:
        def = "\"" + d.*std::get<3>(k.member) + "\"";
    }
    const char* type[] = {"integer", "float", "bool", "string"};
    os << "| `" << k.path << "` | " << type[k.member.index()] << " | `" << def << "` | " << k.doc
       << " |\n";
  }
  os << "| `data.datasets` | array of tables | (required) | Each `[[data.datasets]]` has `path` "
        "(JSONL), `ratio` (float, default 1.0) and `kind` (auto, chat or text). |\n";
  return os.str();
}

std::string ConfigToToml(const TrainConfig& c) {
  toml::table root;
  for (const Key& k : Schema()) {
    std::string path = k.path;
    toml::table* t = &root;
    size_t dot = path.find('.');
    if (dot != std::string::npos) {
      const std::string section = path.substr(0, dot);
      if (!root.contains(section)) root.insert(section, toml::table{});
      t = root[section].as_table();
      path = path.substr(dot + 1);
    }
    std::visit(
        [&](auto m) {
          auto v = c.*m;
          t->insert_or_assign(path, v);
        },
        k.member);
  }
  toml::array ds;
  for (const DatasetConfig& d : c.datasets)
    ds.push_back(toml::table{{"path", d.path}, {"ratio", d.ratio}, {"kind", d.kind}});
  root["data"].as_table()->insert_or_assign("datasets", ds);
  std::ostringstream os;
  os << root << "\n";
  return os.str();
}

LoraSpec LoraSpecOf(const TrainConfig& c) {
  LoraSpec spec;
  spec.rank = c.lora_rank;
  spec.alpha = c.lora_alpha;
  spec.rslora = c.lora_rslora;
  spec.dropout = c.lora_dropout;
  spec.targets = SplitLoraTargets(c.lora_target_modules);
  spec.expert_targets = SplitLoraTargets(c.lora_target_parameters);
  return spec;
}

}  // namespace xt
