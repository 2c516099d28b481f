#include "xtuner/train/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "xtuner/core/file_util.h"
#include "xtuner/data/sampler.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/host_memory.h"
#include "xtuner/dist/node_cpus.h"
#include "xtuner/dist/shard_io.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/init.h"
#include "xtuner/model/lora.h"
#include "xtuner/ops/ops.h"
#include "xtuner/optim/adamw.h"
#include "xtuner/optim/clip.h"
#include "xtuner/optim/lr_schedule.h"
#include "xtuner/optim/non_finite_guard.h"
#include "xtuner/plan/frozen_bf16.h"
#include "xtuner/plan/plan.h"
#include "xtuner/train/backend.h"
#include "xtuner/train/evaluate.h"
#include "xtuner/train/export_files.h"
#include "xtuner/train/metrics.h"
#include "xtuner/train/metrics_flops.h"
#include "xtuner/train/metrics_jsonl.h"
#include "xtuner/train/progress.h"
#include "xtuner/train/progress_format.h"
#include "xtuner/train/progress_summary.h"
#include "xtuner/train/router_bias.h"
#include "xtuner/train/run_memory.h"
#include "xtuner/train/tensorboard.h"
#include "xtuner/train/train_checkpoint.h"
#include "xtuner/train/train_data.h"

namespace xt {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};

// High-water mark of this process's resident memory (VmHWM), in bytes.
int64_t PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

// The model's config.json, with the run's LoRA adapters ([lora]) when it has any.
Result<ModelConfig> LoadModelConfig(const TrainConfig& cfg) {
  XT_ASSIGN_OR_RETURN(ModelConfig mc,
                      ModelConfig::Load(cfg.load_from.empty() ? cfg.model_config : cfg.load_from));
  if (cfg.aux_loss_coef >= 0) mc.router_aux_loss_coef = cfg.aux_loss_coef;
  if (cfg.lora_rank == 0) return mc;
  XT_ASSIGN_OR_RETURN(mc.lora, ResolveLora(LoraSpecOf(cfg), mc, "lora"));
  return mc;
}

// The optimizer's decay ranges in shard coordinates: the whole model's, cut to what this rank
// owns.
std::vector<DecayRange> ShardDecayRanges(const ModelConfig& mc,
                                         const std::vector<OwnedRange>& owned) {
  std::vector<DecayRange> out;
  for (const DecayRange& d : DefaultDecayRanges(ParamLayout(mc)))
    ForEachOverlap(owned, d.offset, d.numel, [&](int64_t shard, int64_t, int64_t n) {
      out.push_back({shard, n, d.weight_decay, d.frozen});
    });
  return out;
}

// Fills `dir` whole or not at all: `write` fills "<dir>.tmp", which then replaces `dir` in one step
// (SwapInDirectory).
Status ReplaceDirectory(const std::string& dir, const std::string& what,
                        const std::function<Status(const fs::path& tmp)>& write) {
  const fs::path tmp = dir + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (Status st = write(tmp); !st.ok()) {
    fs::remove_all(tmp, ec);
    return st.With(what + " to " + dir + " failed");
  }
  return SwapInDirectory(tmp.string(), dir);
}

// Writes an HF export (config, weights, tokenizer files) of the model of config `mc` whose
// parameters `params` gives into `dir`, replacing it whole; a LoRA run's adapter as PEFT saves
// it into "<dir>-adapter" too (from params.slab() after the model: its adapters stay).
Status ExportModel(const TrainConfig& cfg, const ModelConfig& mc, ExportParams& params,
                   const TrainData& data, const std::string& dir) {
  const ParamLayout layout(mc);
  XT_RETURN_IF_ERROR(ReplaceDirectory(dir, "export", [&](const fs::path& tmp) {
    XT_ASSIGN_OR_RETURN(ExportDType dtype, ParseExportDType(cfg.export_dtype, "export.dtype"));
    XT_RETURN_IF_ERROR(SaveHfModelFrom(mc, layout, params, tmp.string(), dtype,
                                       size_t(cfg.export_shard_mb) << 20));
    return CopyExportFiles(data.tokenizer_path, cfg.load_from, tmp.string());
  }));
  if (!mc.lora.enabled()) return Status::OK();
  return ReplaceDirectory(dir + "-adapter", "adapter export", [&](const fs::path& tmp) {
    return SaveLoraAdapter(mc, layout, params.slab(), tmp.string(),
                           fs::absolute(cfg.load_from).lexically_normal().string());
  });
}

// The export every rank takes part in: rank 0 writes it, gathering the model a unit at a time
// (ShardedExportParams). An error is rank 0's.
Status Export(const TrainConfig& cfg, Comm& world, const ModelConfig& mc, const Mesh& mesh,
              ShardedParams& store, const TrainData& data, const std::string& dir) {
  ShardedExportParams params(world, mc, mesh, store.params(), store.shard_size());
  if (world.rank() != 0) {
    params.Serve();
    return Status::OK();
  }
  const Status st = ExportModel(cfg, mc, params, data, dir);
  params.Done();
  return st;
}

// Sums balancing statistics over the ranks (every rank holds E experts' worth, possibly empty).
void AllReduceBalanceStats(Comm& world, BalanceStats* s) {
  const size_t E = s->count.size();
  std::vector<double> v(2 * E + 1);
  std::copy(s->count.begin(), s->count.end(), v.begin());
  std::copy(s->prob_sum.begin(), s->prob_sum.end(), v.begin() + E);
  v[2 * E] = double(s->rows);
  world.AllReduceSum(v.data(), int64_t(v.size()));
  std::copy(v.begin(), v.begin() + E, s->count.begin());
  std::copy(v.begin() + E, v.begin() + 2 * E, s->prob_sum.begin());
  s->rows = int64_t(v[2 * E]);
}

}  // namespace

void RequestStop() { g_stop.store(true); }
void ClearStopRequest() { g_stop.store(false); }

Result<TrainResult> RunTraining(const TrainConfig& cfg, std::FILE* log, Comm* world_in) {
  XT_RETURN_IF_ERROR(ValidateTrainConfig(cfg));
  std::unique_ptr<Comm> single;
  if (!world_in) single = MakeSingleComm();
  Comm& world = world_in ? *world_in : *single;
  const bool lead = world.rank() == 0;
  if (!lead) log = nullptr;
  // The matmul precision of this run, restored on every way out.
  struct PrecisionScope {
    ops::MatmulPrecision old = ops::GetMatmulPrecision();
    ~PrecisionScope() { ops::SetMatmulPrecision(old); }
  } precision_scope;
  ops::SetMatmulPrecision(cfg.precision == "bf16" ? ops::MatmulPrecision::kBf16
                                                  : ops::MatmulPrecision::kFp32);
  const auto t_start = std::chrono::steady_clock::now();
  auto seconds_since = [](auto t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::error_code ec;
  fs::create_directories(cfg.work_dir, ec);
  if (ec) return Status::Error(cfg.work_dir + ": cannot create the work dir: " + ec.message());

  // ---- mesh, model, data, optimizer: every input is checked before the first step.
  // Whether any rank was asked to stop (a collective: every rank decides the same).
  auto stop_requested = [&world] {
    double stop = g_stop.load() ? 1.0 : 0.0;
    world.AllReduceMax(&stop, 1);
    return stop > 0;
  };
  auto interrupted = [] {
    return Status::Error("interrupted before training started: nothing was written");
  };
  // A fresh run never overwrites another run's checkpoints (and metrics.jsonl) in the work dir.
  const std::string existing = FindLatestCheckpoint(cfg.work_dir);
  if (cfg.resume.empty() && !existing.empty())
    return Status::Error(cfg.work_dir + " already holds checkpoints (latest: " + existing +
                         "): continue with --resume auto, or choose another work dir");
  XT_ASSIGN_OR_RETURN(const ModelConfig mc, LoadModelConfig(cfg));
  XT_ASSIGN_OR_RETURN(const Mesh mesh, MakeMesh(world.size(), world.rank(), int(cfg.ep), mc));
  XT_RETURN_IF_ERROR(CheckTrainBackend(cfg.device));
  {  // the export's dtype before hours of training
    XT_ASSIGN_OR_RETURN(ExportDType dtype, ParseExportDType(cfg.export_dtype, "export.dtype"));
    const Status st = ExportSupports(mc, dtype);
    if (!st.ok())
      return Status::Error("export.dtype = \"" + cfg.export_dtype + "\": " + st.message());
  }
  // The schedule before any data is read (a warm-up longer than the run is a config error).
  LrScheduleConfig lc;
  XT_ASSIGN_OR_RETURN(lc.type, ParseLrScheduleType(cfg.schedule));
  lc.lr = cfg.lr;
  lc.min_lr = cfg.min_lr;
  lc.total_steps = cfg.steps;
  lc.warmup_steps = cfg.warmup_steps;
  lc.warmup_ratio = cfg.warmup_steps > 0 ? 0.0 : cfg.warmup_ratio;
  XT_ASSIGN_OR_RETURN(LrSchedule schedule, LrSchedule::Create(lc));
  if (cfg.global_batch_size % mesh.dp != 0)
    return Status::Error("train.global_batch_size = " + std::to_string(cfg.global_batch_size) +
                         " rows cannot be split evenly over the " + std::to_string(mesh.dp) +
                         " data-parallel groups (" + mesh.ToString() + "): make it a multiple of " +
                         std::to_string(mesh.dp));
  // Rank r trains on rows [r * G / world, (r + 1) * G / world) of each global batch of G. When G
  // is not a multiple of the ranks (ep ranks share their dp group's rows), some ranks hold one
  // row fewer and pad with empty micro-batches: every rank runs as many micro-batches as the
  // rank with the most rows, so their collectives (gathers, expert exchanges) pair up.
  const int64_t G = cfg.global_batch_size, micro = cfg.micro_batch_size;
  auto row_begin = [&](int64_t r) { return r * G / mesh.world; };
  const int64_t micro_per_rank = ((G + mesh.world - 1) / mesh.world + micro - 1) / micro;
  int64_t real_micro_batches = 0;  // the non-empty ones, over all ranks
  for (int64_t r = 0; r < mesh.world; ++r)
    real_micro_batches += (row_begin(r + 1) - row_begin(r) + micro - 1) / micro;
  // The dp group holds the same experts; the ep group (consecutive ranks) the other experts.
  std::unique_ptr<Comm> dp_group = world.Split(mesh.ep_rank, mesh.dp_rank);
  std::unique_ptr<Comm> ep_group = world.Split(mesh.dp_rank, mesh.ep_rank);
  ShardedParams store(mc, mesh, &world, dp_group.get());
  const std::string host_warning = CheckHostState(store, cfg.device != "cpu", world);
  if (!host_warning.empty() && log && lead)
    std::fprintf(log, "warning: %s\n", host_warning.c_str());
  if (!cfg.load_from.empty()) {
    XT_RETURN_IF_ERROR(LoadHfShard(cfg.load_from, mc, store.owned(), store.params()));
  } else {
    InitShardRandom(mc, store.owned(), store.params(), cfg.initializer_range, uint64_t(cfg.seed));
  }
  if (mc.lora.enabled()) {  // the adapters: from a PEFT adapter, or PEFT's initialisation
    if (!cfg.lora_adapter.empty()) {
      XT_RETURN_IF_ERROR(LoadLoraShard(cfg.lora_adapter, mc, store.owned(), store.params()));
    } else {  // (a LoRA run always loads its base: ValidateTrainConfig)
      InitShardRandom(mc, store.owned(), store.params(), cfg.initializer_range, uint64_t(cfg.seed),
                      /*adapters_only=*/true);
    }
  }
  if (stop_requested()) return interrupted();
  Transformer m(mc, &store, mc.is_moe() ? mesh.first_expert(mc) : 0,
                mc.is_moe() ? mesh.experts_per_rank(mc) : -1, ep_group.get());
  m.SetRecompute(cfg.recompute);
  // Rank 0 tokenizes (and caches) first; the others then read its cache.
  if (!lead) world.Barrier();
  Result<TrainData> data_or = PrepareTrainData(cfg, mc.vocab_size, log);
  if (lead) world.Barrier();
  XT_RETURN_IF_ERROR(data_or.status());
  TrainData data = std::move(*data_or);
  EvalSet eval_set;  // read now: a bad eval file fails before the training, not after it
  if (!cfg.eval_file.empty()) {
    XT_ASSIGN_OR_RETURN(eval_set, ReadEvalSet(cfg.eval_file, *data.tokenizer, *data.chat_template,
                                              cfg.eval_max_new_tokens, mc.vocab_size));
  }
  if (stop_requested()) return interrupted();
  SamplerOptions so;
  so.global_batch_rows = cfg.global_batch_size;
  so.seed = uint64_t(cfg.seed);
  XT_ASSIGN_OR_RETURN(Sampler sampler, Sampler::Create(data.num_rows(), so));
  AdamWConfig ac;
  ac.beta1 = cfg.beta1;
  ac.beta2 = cfg.beta2;
  ac.eps = cfg.eps;
  ac.weight_decay = cfg.weight_decay;
  std::vector<DecayRange> shard_decay = ShardDecayRanges(mc, store.owned());
  XT_ASSIGN_OR_RETURN(AdamW adamw, AdamW::Create(ac, shard_decay, store.shard_size()));
  const ShardState shard{&store.owned(), store.params(), &adamw};
  NonFiniteGuard guard(int(cfg.max_nonfinite_steps));

  TrainState state;
  // The rows a step sees depend on the samples and on how they were packed.
  state.data_key = data.cache->key().Hex() + ";max_length=" + std::to_string(cfg.max_length) +
                   ";overlong=" + cfg.overlong;
  std::string resume_from = cfg.resume;
  if (resume_from == "auto") {
    resume_from = FindLatestCheckpoint(cfg.work_dir);
    if (resume_from.empty() && log)
      std::fprintf(log, "resume: no checkpoint in %s, starting fresh\n", cfg.work_dir.c_str());
  }
  // A LoRA run's checkpoints hold its adapters only and name its base by fingerprint.
  std::string base_fingerprint;
  if (mc.lora.enabled()) {
    XT_ASSIGN_OR_RETURN(base_fingerprint, HfWeightsFingerprint(cfg.load_from));
    state.lora_base = fs::absolute(cfg.load_from).lexically_normal().string();
    state.lora_base_fingerprint = base_fingerprint;
  }
  if (!resume_from.empty()) {
    const std::string key = state.data_key, base = state.lora_base;
    XT_RETURN_IF_ERROR(LoadTrainCheckpoint(resume_from, mc, shard, &state));
    if (mc.lora.enabled() && state.lora_base_fingerprint != base_fingerprint)
      return Status::Error(resume_from + ": this LoRA run's base model was " + state.lora_base +
                           " (fingerprint " + state.lora_base_fingerprint +
                           "); model.load_from is another (" + base_fingerprint +
                           "): its checkpoints hold the adapters only");
    state.lora_base = base;  // (the same weights, wherever they are now)
    if (state.data_key != key)
      return Status::Error(resume_from + ": this checkpoint was trained on other data (cache key " +
                           state.data_key + ", now " + key + ")");
    XT_RETURN_IF_ERROR(sampler.Restore(state.sampler).With(resume_from));
    guard.Restore(state.nonfinite_consecutive, state.nonfinite_total);
    if (log)
      std::fprintf(log, "resumed from %s at step %lld\n", resume_from.c_str(),
                   (long long)state.step);
  }
  // Where the steps run: on the host state in place, or on a device that starts from it.
  std::unique_ptr<TrainBackend> backend;
  if (cfg.device == "cpu") {
    backend = MakeCpuTrainBackend(&m, &store, &adamw);
  } else {
    TrainBackendArgs ba;
    ba.model = &mc;
    ba.store = &store;
    ba.adamw = &adamw;
    ba.decay = std::move(shard_decay);
    ba.recompute = cfg.recompute;
    ba.micro_batch_size = cfg.micro_batch_size;
    ba.max_length = cfg.max_length;
    ba.bf16 = cfg.precision == "bf16";
    ba.world = &world;
    ba.mesh = &mesh;
    ba.gpu_comm = cfg.gpu_comm;
    ba.cuda_attention = cfg.cuda_attention;
    ba.cuda_experts_gemm = cfg.cuda_experts_gemm;
    ba.cuda_frozen_weights = cfg.cuda_frozen_weights;
    XT_ASSIGN_OR_RETURN(backend, MakeTrainBackend(cfg.device, ba));
  }
  if (lead) {
    // The effective config, with absolute paths so that it means the same from any directory
    // (xtuner convert reads the tokenizer's path from it).
    TrainConfig eff = cfg;
    auto abs = [](std::string& p) {
      if (!p.empty()) p = fs::absolute(p).lexically_normal().string();
    };
    abs(eff.work_dir), abs(eff.load_from), abs(eff.model_config), abs(eff.eval_file);
    eff.tokenizer = fs::absolute(data.tokenizer_path).lexically_normal().string();
    for (DatasetConfig& d : eff.datasets) abs(d.path);
    XT_RETURN_IF_ERROR(
        WriteFileAtomically((fs::path(cfg.work_dir) / "config.toml").string(), ConfigToToml(eff)));
  }
  std::unique_ptr<MetricsJsonl> jsonl;
  std::unique_ptr<TensorBoardWriter> tb;
  if (lead) {
    XT_ASSIGN_OR_RETURN(
        jsonl, MetricsJsonl::Open((fs::path(cfg.work_dir) / "metrics.jsonl").string(), state.step));
    if (cfg.tensorboard) {
      XT_ASSIGN_OR_RETURN(tb, TensorBoardWriter::Open((fs::path(cfg.work_dir) / "tb").string()));
      // A resumed run: TensorBoard drops what a crashed attempt logged past the checkpoint.
      if (state.step > 0) XT_RETURN_IF_ERROR(tb->AddSessionStart(state.step + 1));
    }
  }

  // ---- summary
  const int64_t total_params = ParamLayout(mc).total();
  const int64_t active = ActiveParams(mc, total_params);  // (experts' adapters as their experts)
  // Matmul parameters a token passes through: the active ones less the embedding lookup (the
  // lm_head is a matmul; with tied embeddings the one matrix serves as both).
  const int64_t matmul_params =
      active - (mc.tie_word_embeddings ? 0 : mc.vocab_size * mc.hidden_size);
  RunSummary sum;
  sum.total_params = total_params;
  sum.active_params = active;
  sum.num_layers = mc.num_layers;
  sum.num_experts = mc.num_experts;
  sum.top_k = mc.top_k;
  sum.samples = data.cache->num_samples();
  sum.tokens = data.cache->num_tokens();
  sum.masked_fraction =
      double(data.cache->num_masked_tokens()) / double(std::max<int64_t>(1, sum.tokens));
  sum.dropped = data.pack_stats.dropped;
  sum.truncated = data.pack_stats.truncated;
  sum.extra.push_back(
      {"data", "rows",
       std::to_string(data.num_rows()) + " of " + std::to_string(cfg.max_length) + " tokens"});
  sum.extra.push_back({"data", "cache", data.cache_report.rebuilt() ? "built" : "reused"});
  sum.extra.push_back({"data", "chat template", data.TemplateSummary(cfg)});
  AddMemorySummary(cfg, mc, mesh, store, backend->Bf16OnlyFloats(), world, log, &sum);
  sum.extra.push_back({"run", "mesh", mesh.ToString()});
  sum.extra.push_back({"run", "device", backend->Describe()});
  sum.extra.push_back({"run", "threads", DescribeThreads()});
  if (cfg.precision == "bf16")
    sum.extra.push_back({"run", "precision", "bf16 matmuls (fp32 sums, weights and state)"});
  // A balancing loss: the softmax routers' (DeepSeek-V3 balances by its bias instead).
  const bool has_aux = mc.is_moe() && mc.router == RouterKind::kSoftmax;
  if (mc.is_moe()) {
    char coef[48];
    std::snprintf(coef, sizeof(coef), "%g x ", mc.router_aux_loss_coef);
    const std::string weight =
        std::string(coef) +
        (cfg.aux_loss_coef >= 0 ? "(train.aux_loss_coef) " : "(router_aux_loss_coef) ");
    std::string how = !has_aux ? "none (the router's correction bias balances instead)"
                      : mc.router_aux_loss_coef == 0
                          ? std::string(cfg.aux_loss_coef >= 0 ? "none (train.aux_loss_coef = 0)"
                                                               : "none (router_aux_loss_coef = 0)")
                      : cfg.aux_loss_scope == "micro_batch" ? weight + "per micro-batch, averaged"
                      : micro_per_rank > 1
                          ? weight + "global batch (router pre-pass over " +
                                std::to_string(micro_per_rank) + " micro-batches per rank)"
                          : weight + "global batch";
    sum.extra.push_back({"run", "balancing loss", how});
    if (mc.router == RouterKind::kSigmoidGroup && mc.lora.enabled()) {
      sum.extra.push_back({"run", "balancing bias", "frozen with the base model (LoRA)"});
    } else if (mc.router == RouterKind::kSigmoidGroup) {
      char speed[32];
      std::snprintf(speed, sizeof(speed), "%g", cfg.router_bias_update_speed);
      sum.extra.push_back(
          {"run", "balancing bias",
           cfg.router_bias_update_speed > 0
               ? std::string("e_score_correction_bias moves ") + speed + " a step (aux-loss-free)"
               : std::string("kept as loaded (train.router_bias_update_speed = 0)")});
    }
  }
  if (mc.lora.enabled()) {
    const int64_t trainable = AdapterParams(ParamLayout(mc));
    // (The targets apart: one layer's experts each, they may run long.)
    char head[96], dropout[32] = "", tail[64];
    if (mc.lora.dropout > 0)
      std::snprintf(dropout, sizeof dropout, ", dropout %g", mc.lora.dropout);
    std::snprintf(head, sizeof head, "rank %lld, scale %g%s on ", (long long)mc.lora.rank,
                  mc.lora.scale(), dropout);
    std::snprintf(tail, sizeof tail, ": %.3g%% of the parameters train",
                  100.0 * double(trainable) / double(total_params));
    sum.extra.push_back({"run", "LoRA", head + LoraTargetsText(mc.lora) + tail});
  }
  sum.extra.push_back({"run", "steps", std::to_string(cfg.steps)});
  sum.extra.push_back({"run", "work dir", cfg.work_dir});
  if (log) PrintRunSummary(log, sum);

  // ---- the loop
  ProgressOptions po;
  po.every_steps = cfg.log_every;
  po.every_seconds = 0;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> devnull(std::fopen("/dev/null", "w"),
                                                          &std::fclose);
  Progress progress(lead ? (log ? log : stderr) : devnull.get(), cfg.steps, po);
  TrainResult result;
  int64_t last_saved_step = resume_from.empty() ? -1 : state.step;  // resumed: already on disk
  if (!resume_from.empty()) result.last_checkpoint = resume_from;
  result.last_loss = StepMetrics::kNaN;
  auto save = [&]() -> Status {
    XT_RETURN_IF_ERROR(backend->SyncToHost());
    state.sampler = sampler.state();
    state.nonfinite_consecutive = guard.consecutive();
    state.nonfinite_total = guard.total_skipped();
    XT_RETURN_IF_ERROR(SaveTrainCheckpoint(world, cfg.work_dir, mc, mesh, shard, state,
                                           cfg.keep_last, &result.last_checkpoint));
    last_saved_step = state.step;
    return Status::OK();
  };

  const int64_t first_step = state.step;
  const int64_t E = mc.num_experts, n_moe = mc.num_moe_layers();
  const bool global_aux = has_aux && cfg.aux_loss_scope == "global_batch";
  while (state.step < cfg.steps) {
    const auto t_step = std::chrono::steady_clock::now();
    // This rank's share of the global batch (see micro_per_rank above).
    const std::vector<int64_t> all_rows = sampler.Next();
    XT_CHECK(int64_t(all_rows.size()) == G, "sampler: a global batch of the wrong size");
    const std::vector<int64_t> rows(all_rows.begin() + row_begin(mesh.rank),
                                    all_rows.begin() + row_begin(mesh.rank + 1));
    std::vector<MicroBatch> mbs;
    // Summed over the ranks: loss tokens, tokens, masked, sum of squared document lengths (and
    // under sliding windows), ce sum, aux sum, then tokens per expert (per MoE layer).
    std::vector<double> stats(7 + n_moe * E, 0.0);
    for (size_t i = 0; i < rows.size(); i += size_t(micro)) {
      std::vector<int64_t> part(rows.begin() + i,
                                rows.begin() + std::min(rows.size(), i + size_t(micro)));
      const std::vector<uint64_t> noise = RowNoiseKeys(  // LoRA's dropout: by the rows' places
          uint64_t(cfg.seed), state.step, row_begin(mesh.rank) + int64_t(i),
          mc.lora.dropout > 0 ? int64_t(part.size()) : 0);
      XT_ASSIGN_OR_RETURN(MicroBatch mb, BuildMicroBatch(data, part, mc.sliding_window, noise));
      stats[0] += double(mb.batch.num_loss_tokens());
      stats[1] += double(mb.tokens);
      stats[2] += double(mb.masked);
      stats[3] += mb.sum_doc_len_sq;
      stats[4] += mb.sum_windowed_len_sq;
      mbs.push_back(std::move(mb));
    }
    while (int64_t(mbs.size()) < micro_per_rank) mbs.push_back(MicroBatch{Batch::Empty()});
    world.AllReduceSum(stats.data(), 5);
    const int64_t loss_tokens = int64_t(stats[0]);
    XT_RETURN_IF_ERROR(backend->ZeroGrads());
    int64_t activation_bytes = 0;
    const double ce_weight = loss_tokens > 0 ? 1.0 / double(loss_tokens) : 0.0;
    const double micro_batches = double(real_micro_batches);
    // The balancing loss of the whole global batch: its gradient needs the batch's router counts
    // before any backward. One micro-batch per rank: pooled over the ranks between forward and
    // backward. More: pooled first from a router-only forward of every micro-batch. (The
    // softmax routers' loss only: DeepSeek-V3's sigmoid router has none to pool for.)
    BalancePool pool;
    BalanceStats batch_stats;
    if (global_aux && mc.router == RouterKind::kSoftmax && mc.router_aux_loss_coef != 0) {
      if (mbs.size() > 1) {
        for (const MicroBatch& mb : mbs) {
          XT_ASSIGN_OR_RETURN(BalanceStats s, backend->RouterStats(mb.batch));
          batch_stats.Add(s);
        }
        AllReduceBalanceStats(world, &batch_stats);
        pool = [&batch_stats](const BalanceStats&) { return batch_stats; };
      } else {
        pool = [&world](const BalanceStats& local) {
          BalanceStats g = local;
          AllReduceBalanceStats(world, &g);
          return g;
        };
      }
    }
    BalanceStats seen;  // this rank's statistics, summed over its micro-batches
    for (const MicroBatch& mb : mbs) {
      XT_ASSIGN_OR_RETURN(LossInfo info,
                          backend->ForwardBackward(mb.batch, ce_weight,
                                                   global_aux ? 1.0 : 1.0 / micro_batches, pool));
      stats[5] += info.ce_loss * double(info.num_loss_tokens);
      stats[6] += info.aux_loss / micro_batches;
      seen.Add(info.balance);
      activation_bytes = std::max(activation_bytes, info.activation_bytes);
      for (size_t l = 0; l < info.tokens_per_expert.size(); ++l)
        for (int64_t e = 0; e < E; ++e)
          stats[7 + l * E + e] += double(info.tokens_per_expert[l][e]);
    }
    world.AllReduceSum(stats.data() + 5, int64_t(stats.size()) - 5);
    if (global_aux) {
      AllReduceBalanceStats(world, &seen);
      stats[6] = seen.Loss();
    }
    StepMetrics sm;
    sm.tokens = int64_t(stats[1]);
    sm.tokens_per_expert.assign(n_moe, std::vector<int64_t>(E));
    for (int64_t l = 0; l < n_moe; ++l)
      for (int64_t e = 0; e < E; ++e) sm.tokens_per_expert[l][e] = int64_t(stats[7 + l * E + e]);
    sm.ce_loss = loss_tokens > 0 ? stats[5] / double(loss_tokens) : 0.0;
    sm.aux_loss = has_aux ? stats[6] : StepMetrics::kNaN;
    sm.loss = sm.ce_loss + (has_aux ? mc.router_aux_loss_coef * stats[6] : 0.0);
    // The global gradient norm from each rank's share of it (its shard on the CPU: every element
    // is in exactly one rank's shard).
    XT_ASSIGN_OR_RETURN(double sum_sq, backend->GradSumOfSquares());
    world.AllReduceSum(&sum_sq, 1);
    sm.grad_norm = std::sqrt(sum_sq);
    const bool finite = norm_is_finite(sm.grad_norm) && std::isfinite(sm.loss);
    // Clipping scales the gradients as AdamW reads them (no pass of its own).
    const float grad_scale =
        finite && cfg.clip_grad_norm > 0
            ? std::min(1.0f, float(clip_coef(sm.grad_norm, cfg.clip_grad_norm)))
            : 1.0f;
    sm.lr = schedule.lr(state.step);
    Status guard_status;
    if (loss_tokens == 0) {
      // Nothing to learn from (every label -100, e.g. prompts truncated away): no update, and
      // no made-up loss of 0 in the curves.
      sm.ce_loss = sm.loss = StepMetrics::kNaN;
      progress.Message("step " + std::to_string(state.step + 1) +
                       ": the global batch has no loss tokens (every label is -100; are samples "
                       "truncated to data.max_length?): step skipped");
    } else {
      guard_status = guard.Record(finite, sm.loss);
      if (finite) {
        XT_RETURN_IF_ERROR(backend->Step(sm.lr, grad_scale));
        // DeepSeek-V3's bias towards balance, on the backend's shard (frozen with the rest of the
        // base model under LoRA).
        if (!mc.lora.enabled())
          XT_RETURN_IF_ERROR(backend->AddToShard(RouterBiasShardAdds(
              mc, sm.tokens_per_expert, cfg.router_bias_update_speed, store.owned())));
      }
    }
    sm.skipped = !finite || loss_tokens == 0;
    state.step += 1;
    sm.step = state.step;
    // Every rank stops after the same step.
    const int64_t device_peak = backend->PeakMemoryBytes();
    double stop_and_peak[2] = {g_stop.load() ? 1.0 : 0.0,
                               double(device_peak >= 0 ? device_peak : PeakRssBytes())};
    world.AllReduceMax(stop_and_peak, 2);
    sm.step_time_s = seconds_since(t_step);
    sm.elapsed_s = seconds_since(t_start);
    sm.tokens_per_s = double(sm.tokens) / sm.step_time_s;
    const double flops =
        TrainingStepFlops(matmul_params, sm.tokens, mc.num_layers, mc.attention_flops_dim(),
                          stats[3], true, mc.num_sliding_layers(), stats[4]);
    const double achieved = AchievedFlopsPerDevice(flops, sm.step_time_s, mesh.world);
    sm.tflops = achieved / 1e12;
    if (cfg.peak_tflops > 0) sm.mfu = Mfu(achieved, cfg.peak_tflops * 1e12);
    if (mc.is_moe()) {
      sm.max_expert_violation = MaxExpertViolation(sm.tokens_per_expert);
      sm.max_expert_violation_worst = WorstLayerExpertViolation(sm.tokens_per_expert);
    }
    sm.peak_memory_bytes = int64_t(stop_and_peak[1]);
    sm.masked_fraction = sm.tokens > 0 ? stats[2] / double(sm.tokens) : 0.0;
    result.last_loss = sm.loss;
    if (jsonl) XT_RETURN_IF_ERROR(jsonl->Append(sm));
    if (tb) {
      XT_RETURN_IF_ERROR(tb->AddScalars(sm.step, DashboardScalars(sm)));
      XT_RETURN_IF_ERROR(tb->Flush());
    }
    if (state.step == first_step + 1) {  // what recompute saves, once per run
      // The largest rank's: with uneven rows rank 0 may hold the fewest tokens.
      double most_activation_bytes = double(activation_bytes);
      world.AllReduceMax(&most_activation_bytes, 1);
      char msg[160];
      std::snprintf(msg, sizeof msg,
                    "activations kept for the backward: %s per micro-batch%s (recompute %lld of "
                    "%lld layers)",
                    HumanBytes(most_activation_bytes).c_str(),
                    mesh.world > 1 ? " on the largest rank" : "",
                    (long long)backend->recompute_layers(), (long long)mc.num_layers);
      progress.Message(msg);
      if (mesh.world > 1 && cfg.device == "cpu") {  // (a device backend does not use them)
        std::snprintf(msg, sizeof msg,
                      "gathered parameters and gradient buffers (ZeRO-3): %s at most on rank 0",
                      HumanBytes(4.0 * double(store.peak_working_floats())).c_str());
        progress.Message(msg);
      }
    }
    progress.Update(sm);
    if (!guard_status.ok()) {
      progress.Finish();
      return guard_status;
    }
    if (cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0)
      XT_RETURN_IF_ERROR(save());
    if (cfg.export_every > 0 && state.step % cfg.export_every == 0) {
      char name[32];
      std::snprintf(name, sizeof name, "hf-step-%08lld", (long long)state.step);
      XT_RETURN_IF_ERROR(backend->SyncToHost());
      XT_RETURN_IF_ERROR(
          Export(cfg, world, mc, mesh, store, data, (fs::path(cfg.work_dir) / name).string()));
    }
    if (stop_and_peak[0] > 0) {
      result.interrupted = true;
      break;
    }
  }
  progress.Finish();
  result.steps_done = state.step;
  if (last_saved_step != state.step) XT_RETURN_IF_ERROR(save());
  if (result.interrupted) {
    if (log)
      std::fprintf(
          log, "interrupted at step %lld: checkpoint saved to %s; continue with --resume auto\n",
          (long long)state.step, result.last_checkpoint.c_str());
    return result;
  }
  if (!cfg.export_at_end && cfg.eval_file.empty()) return result;
  // (save() above synced the host.) Both run on every rank over the shards: the export gathers
  // the model a unit at a time to rank 0, the eval once per decoding step of a batch.
  if (cfg.export_at_end) {
    const std::string export_dir = (fs::path(cfg.work_dir) / "hf").string();
    const auto t_export = std::chrono::steady_clock::now();
    XT_RETURN_IF_ERROR(Export(cfg, world, mc, mesh, store, data, export_dir));
    result.export_dir = export_dir;
    if (log)
      std::fprintf(log, "exported the model to %s (%.1f s)\n", export_dir.c_str(),
                   seconds_since(t_export));
  }
  if (!cfg.eval_file.empty()) {
    XT_ASSIGN_OR_RETURN(EvalReport report,
                        Evaluate(m, world, eval_set, *data.tokenizer, *data.chat_template, log));
    result.eval_accuracy = report.accuracy();
  }
  return result;
}

}  // namespace xt
