// The training loop end to end on a tiny Qwen3-MoE: the loss falls, resume is bit-exact, the
// export loads back with the same weights, bad data stops the run before training, and a failed
// checkpoint save keeps the previous checkpoint.
#include "xtuner/train/trainer.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "util/testing.h"
#include "util/tiny_run.h"
#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/generate.h"
#include "xtuner/ops/ops.h"
#include "xtuner/train/train_checkpoint.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

using testing::Losses;
using testing::Metric;
using testing::TinyRun;

TEST(Trainer, LossFallsAndMetricsAreWritten) {
  TrainConfig c = TinyRun("fall");
  c.steps = 40;
  c.lr = 1e-2;
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::vector<double> losses = Losses(c.work_dir);
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_LT(losses.back(), 0.7 * losses.front()) << losses.front() << " -> " << losses.back();
  std::ifstream in(c.work_dir + "/metrics.jsonl");
  std::string first;
  std::getline(in, first);
  auto j = testing::Json(first);
  for (const char* k : {"step", "loss", "ce_loss", "aux_loss", "grad_norm", "lr", "tokens",
                        "tokens_per_s", "tflops", "mfu", "max_expert_violation",
                        "tokens_per_expert", "peak_memory_bytes", "masked_fraction"})
    EXPECT_TRUE(j.contains(k)) << k;
  bool tb = false;
  for (const auto& e : fs::directory_iterator(c.work_dir + "/tb"))
    tb |= e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_TRUE(tb);
}

TEST(Trainer, ResumeIsBitExact) {
  TrainConfig straight = TinyRun("straight");
  ASSERT_TRUE(RunTraining(straight, nullptr).ok());
  // A second run saves at steps 3 and 6; a third starts from its step-3 checkpoint alone.
  TrainConfig first = TinyRun("split");
  first.checkpoint_every = 3;
  ASSERT_TRUE(RunTraining(first, nullptr).ok());
  const std::string ckpt3 = first.work_dir + "/checkpoints/step-00000003";
  ASSERT_TRUE(fs::exists(ckpt3));  // keep_last 2 keeps steps 3 and 6
  TrainConfig resumed = testing::ResumedRun(first, 3);
  auto r = RunTraining(resumed, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::vector<double> a = Losses(straight.work_dir), b = Losses(resumed.work_dir);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 3u);  // steps 4..6
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[3 + i], b[i]) << "step " << 4 + i;
  // And the final parameters are bit-identical.
  const std::string sa = straight.work_dir + "/checkpoints/step-00000006";
  const std::string sb = resumed.work_dir + "/checkpoints/step-00000006";
  auto mc = ModelConfig::Load(sa + "/config.json");
  ASSERT_TRUE(mc.ok());
  auto ma = ReadCheckpointParams(sa, *mc), mb = ReadCheckpointParams(sb, *mc);
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_EQ(*ma, *mb);
}

// TinyRun on a DeepSeek-V3 (testing::TinyDeepseekV3Config).
TrainConfig TinyDeepseekRun(const std::string& tag) {
  TrainConfig c = TinyRun(tag);
  std::ofstream(c.model_config) << testing::TinyDeepseekV3Config();
  return c;
}

// DeepSeek-V3 trains; after each step every correction bias moves by the speed towards the
// balance of that step's counts (metrics.jsonl's tokens_per_expert), and resume is bit-exact
// with the biases in the checkpoint.
TEST(Trainer, DeepseekV3BalancesByBiasAndResumesExactly) {
  TrainConfig straight = TinyDeepseekRun("ds_straight");
  straight.router_bias_update_speed = 0.01;
  straight.checkpoint_every = 3;
  auto r = RunTraining(straight, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> losses = Losses(straight.work_dir);
  ASSERT_EQ(losses.size(), 6u);
  for (double l : losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_LT(losses.back(), losses.front());
  // The expected bias: the sum of each step's deltas from the recorded counts.
  auto mc = ModelConfig::Load(straight.model_config);
  ASSERT_TRUE(mc.ok());
  int steps = 0;
  const std::vector<float> want = testing::BiasFromMetrics(straight.work_dir, 0.01, &steps);
  ASSERT_EQ(steps, 6);
  ASSERT_EQ(int64_t(want.size()), mc->num_experts);
  const std::string end = straight.work_dir + "/checkpoints/step-00000006";
  auto params = ReadCheckpointParams(end, *mc);
  ASSERT_TRUE(params.ok()) << params.status().message();
  const ParamLayout layout(*mc);
  const ParamInfo* bias = layout.Find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_TRUE(bias);
  bool moved = false;
  for (int64_t e = 0; e < mc->num_experts; ++e) {
    EXPECT_NEAR((*params)[bias->offset + e], want[e], 1e-6) << "expert " << e;
    moved |= want[e] != 0.0f;
  }
  EXPECT_TRUE(moved) << "the counts were balanced at every step: the test shows nothing";
  // Resume from step 3 gives the same steps 4..6 and the same parameters, biases included.
  TrainConfig resumed = testing::ResumedRun(straight, 3);
  auto rr = RunTraining(resumed, nullptr);
  ASSERT_TRUE(rr.ok()) << rr.status().message();
  const std::vector<double> tail = Losses(resumed.work_dir);
  ASSERT_EQ(tail.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tail[i], losses[3 + i]) << "step " << 4 + i;
  auto params2 = ReadCheckpointParams(resumed.work_dir + "/checkpoints/step-00000006", *mc);
  ASSERT_TRUE(params2.ok());
  EXPECT_EQ(*params, *params2);
  // With speed 0 the bias stays as initialised (zero).
  TrainConfig still = TinyDeepseekRun("ds_still");
  still.steps = 2;
  still.router_bias_update_speed = 0;
  ASSERT_TRUE(RunTraining(still, nullptr).ok());
  auto p0 = ReadCheckpointParams(still.work_dir + "/checkpoints/step-00000002", *mc);
  ASSERT_TRUE(p0.ok());
  for (int64_t e = 0; e < mc->num_experts; ++e) EXPECT_EQ((*p0)[bias->offset + e], 0.0f);
}

// GPT-OSS trains from a random start (sinks, biases, sliding window, the clamped GLU), resumes
// bit for bit, refuses an fp8 export before its first step, and its export holds the hub's
// stacked expert tensors and loads back with the checkpoint's weights.
TEST(Trainer, GptOssTrainsResumesAndExports) {
  TrainConfig c = TinyRun("gpt_oss");
  std::ofstream(c.model_config) << testing::TinyGptOssConfig();
  c.checkpoint_every = 3;
  c.export_at_end = true;
  c.export_dtype = "fp32";
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> losses = Losses(c.work_dir);
  ASSERT_EQ(losses.size(), 6u);
  for (double l : losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_LT(losses.back(), losses.front());
  auto exported = LoadHfModel(r->export_dir);
  ASSERT_TRUE(exported.ok()) << exported.status().message();
  auto params = ReadCheckpointParams(r->last_checkpoint, (*exported)->config());
  ASSERT_TRUE(params.ok()) << params.status().message();
  EXPECT_EQ(std::memcmp(params->data(), (*exported)->params().data(), params->size() * 4), 0);
  auto file = SafetensorsFile::Open(r->export_dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(file->contains("model.layers.1.mlp.experts.gate_up_proj"));
  EXPECT_FALSE(file->contains("model.layers.1.mlp.experts.0.gate_up_proj"));

  TrainConfig resumed = testing::ResumedRun(c, 3);
  resumed.export_at_end = false;
  ASSERT_TRUE(RunTraining(resumed, nullptr).ok());
  const std::vector<double> tail = Losses(resumed.work_dir);
  ASSERT_EQ(tail.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tail[i], losses[3 + i]) << "step " << 4 + i;

  TrainConfig fp8 = TinyRun("gpt_oss_fp8");
  std::ofstream(fp8.model_config) << testing::TinyGptOssConfig();
  fp8.export_dtype = "fp8";
  auto refused = RunTraining(fp8, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("fp8 export of gpt_oss is not implemented"),
            std::string::npos)
      << refused.status().message();
  EXPECT_FALSE(fs::exists(fp8.work_dir + "/metrics.jsonl"));
}

std::string RunLog(const TrainConfig& c, Result<TrainResult>* result) {
  char* buf = nullptr;
  size_t size = 0;
  std::FILE* f = open_memstream(&buf, &size);
  *result = RunTraining(c, f);
  std::fclose(f);
  const std::string log(buf, size);
  std::free(buf);
  return log;
}

// GPT-OSS on chat data in its harmony format, recognised from the tokenizer's
// tokenizer_config.json: thinking, tool calls and developer messages train, and a run resumed
// (here on the same day) reuses the tokens of the cache, date included, bit for bit.
TEST(Trainer, GptOssTrainsOnHarmonyChatsAndResumes) {
  TrainConfig c = TinyRun("harmony");
  std::ofstream(c.model_config) << testing::TinyGptOssConfig();
  c.tokenizer = testing::DataPath("tokenizers/chat_gpt_oss/tokenizer.json");
  c.chat_template = "auto";
  c.reasoning_effort = "high";
  c.max_length = 512;
  c.steps = 4;
  c.checkpoint_every = 2;
  {
    std::ofstream out(c.datasets[0].path);
    for (int i = 0; i < 16; ++i) {
      const std::string n = std::to_string(i), m = std::to_string(i + 1);
      out << R"({"tools": [{"type": "function", "function": {"name": "add", "description": "Adds",)"
          << R"( "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}}],)"
          << R"( "messages": [{"role": "developer", "content": "Count."},)"
          << R"( {"role": "user", "content": "After )" << n << R"(?"},)"
          << R"( {"role": "assistant", "content": "", "thinking": "Add one.", "tool_calls":)"
          << R"( [{"function": {"name": "add", "arguments": {"x": )" << n << R"(}}}]},)"
          << R"( {"role": "tool", "content": ")" << m << R"("},)"
          << R"( {"role": "assistant", "content": ")" << m << R"(", "thinking": "It said )" << m
          << R"(."}]})"
          << "\n";
    }
  }
  Result<TrainResult> r = Status::Error("not run");
  auto today = [] { return ChatTemplate::ByName("harmony")->options().current_date; };
  const std::string before = today();
  std::string log = RunLog(c, &r);
  const std::string after = today();  // (a run across midnight has either date)
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(log.find("harmony (reasoning high, current date " + before + ")") !=
                  std::string::npos ||
              log.find("harmony (reasoning high, current date " + after + ")") != std::string::npos)
      << log;
  const std::vector<double> losses = Losses(c.work_dir);
  ASSERT_EQ(losses.size(), 4u);
  EXPECT_LT(losses.back(), losses.front());

  TrainConfig resumed = testing::ResumedRun(c, 2);
  log = RunLog(resumed, &r);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_NE(log.find("harmony (reasoning high, current date that of the cached tokens)"),
            std::string::npos)
      << log;
  const std::vector<double> tail = Losses(resumed.work_dir);
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_EQ(tail[0], losses[2]);
  EXPECT_EQ(tail[1], losses[3]);

  // The harmony options belong to harmony.
  TrainConfig chatml = TinyRun("harmony_option_chatml");
  chatml.reasoning_effort = "low";
  log = RunLog(chatml, &r);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "data.reasoning_effort (\"low\") is an option of the harmony chat template; the chat "
            "template is chatml");
  EXPECT_FALSE(fs::exists(chatml.work_dir + "/metrics.jsonl"));
}

// data.tokenizer may name a model's directory, as Hugging Face's from_pretrained takes one: its
// tokenizer.json is used, and exported.
TEST(Trainer, ATokenizerDirectoryMeansItsTokenizerJson) {
  TrainConfig c = TinyRun("tokenizer_dir");
  const std::string file = c.tokenizer;
  c.tokenizer = fs::path(file).parent_path().string();
  c.steps = 1;
  c.export_at_end = true;
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  auto exported = ReadFileToString(r->export_dir + "/tokenizer.json");
  auto source = ReadFileToString(file);
  ASSERT_TRUE(exported.ok()) << exported.status().message();
  ASSERT_TRUE(source.ok());
  EXPECT_EQ(*exported, *source);
}

// A run from a Hugging Face model exports what transformers' generate reads besides the weights:
// config.json's eos_token_id and pad_token_id, and the model's generation_config.json.
TEST(Trainer, ExportKeepsTheGenerationSettings) {
  TrainConfig first = TinyRun("gen_settings_base");
  first.steps = 1;
  first.export_at_end = true;
  auto base = RunTraining(first, nullptr);
  ASSERT_TRUE(base.ok()) << base.status().message();
  const std::string model = base->export_dir;
  nlohmann::json cj = testing::JsonFile(model + "/config.json");
  cj["eos_token_id"] = {7, 9};
  cj["pad_token_id"] = 3;
  std::ofstream(model + "/config.json") << DumpJson(cj, 2);
  std::ofstream(model + "/generation_config.json") << R"({"eos_token_id": [7, 9, 11]})";

  TrainConfig c = TinyRun("gen_settings");
  c.model_config.clear();
  c.load_from = model;
  c.steps = 1;
  c.export_at_end = true;
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const nlohmann::json out = testing::JsonFile(r->export_dir + "/config.json");
  EXPECT_EQ(out["eos_token_id"], nlohmann::json({7, 9}));
  EXPECT_EQ(out["pad_token_id"], 3);
  auto ids = GenerationEosIds(r->export_dir + "/generation_config.json");
  ASSERT_TRUE(ids.ok()) << ids.status().message();
  EXPECT_EQ(*ids, (std::vector<int64_t>{7, 9, 11}));
}

// train.aux_loss_coef replaces config.json's router_aux_loss_coef (GPT-OSS's hub config says
// 0.9): the loss is ce + that coefficient times the balancing loss, 0 removes it, and the
// summary says which weight is in use.
TEST(Trainer, AuxLossCoefOverridesTheConfig) {
  for (double coef : {0.5, 0.0}) {
    TrainConfig c = TinyRun("aux_coef" + std::to_string(int(coef * 10)));
    std::ofstream(c.model_config) << testing::TinyGptOssConfig();  // router_aux_loss_coef 0.02
    c.steps = 2;
    c.aux_loss_coef = coef;
    char* buf = nullptr;
    size_t size = 0;
    std::FILE* f = open_memstream(&buf, &size);
    auto r = RunTraining(c, f);
    std::fclose(f);
    const std::string log(buf, size);
    std::free(buf);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const std::vector<double> loss = Losses(c.work_dir), ce = Metric(c.work_dir, "ce_loss"),
                              aux = Metric(c.work_dir, "aux_loss");
    ASSERT_EQ(loss.size(), 2u);
    ASSERT_EQ(ce.size(), 2u);
    ASSERT_EQ(aux.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_GT(aux[i], 0.5);
      EXPECT_NEAR(loss[i], ce[i] + coef * aux[i], 1e-5 * loss[i]) << coef << " step " << i;
    }
    EXPECT_NE(log.find(coef > 0 ? "0.5 x (train.aux_loss_coef) global batch"
                                : "none (train.aux_loss_coef = 0)"),
              std::string::npos)
        << log;
  }
}

// The balancing loss of the global batch does not depend on how the batch is cut into
// micro-batches (1, 2 or 4 rows: 4, 2 or 1 micro-batches, the first two through the router
// pre-pass); transformers' per-micro-batch loss does.
TEST(Trainer, GlobalBatchBalancingLossIsTheSameForEveryMicroBatchSize) {
  std::vector<double> ref_loss, ref_aux;
  for (int64_t micro : {4, 2, 1}) {
    TrainConfig c = TinyRun("aux_global" + std::to_string(micro));
    c.micro_batch_size = micro;
    ASSERT_TRUE(RunTraining(c, nullptr).ok());
    const std::vector<double> loss = Losses(c.work_dir), aux = Metric(c.work_dir, "aux_loss");
    ASSERT_EQ(loss.size(), 6u);
    ASSERT_EQ(aux.size(), 6u);
    if (ref_loss.empty()) {
      ref_loss = loss, ref_aux = aux;
      continue;
    }
    for (size_t i = 0; i < loss.size(); ++i) {
      EXPECT_NEAR(loss[i], ref_loss[i], 1e-5 * ref_loss[i]) << "micro " << micro << " step " << i;
      EXPECT_NEAR(aux[i], ref_aux[i], 1e-5 * ref_aux[i]) << "micro " << micro << " step " << i;
    }
  }
  TrainConfig c = TinyRun("aux_micro");
  c.micro_batch_size = 1;
  c.aux_loss_scope = "micro_batch";
  ASSERT_TRUE(RunTraining(c, nullptr).ok());
  const std::vector<double> aux = Metric(c.work_dir, "aux_loss");
  ASSERT_EQ(aux.size(), 6u);
  EXPECT_GT(std::abs(aux[0] - ref_aux[0]), 1e-4 * ref_aux[0])
      << "per-micro-batch losses averaged gave the global batch's";
}

// bf16 matmuls follow the fp32 loss curve closely early on (the demo's whole 300-step curve and
// its eval are compared in bench/README.md), and are really in use (the losses differ).
TEST(Trainer, Bf16MatmulsFollowTheFp32LossCurve) {
  TrainConfig fp32 = TinyRun("prec32");
  fp32.steps = 20;
  TrainConfig bf16 = TinyRun("prec16");
  bf16.steps = 20;
  bf16.precision = "bf16";
  ASSERT_TRUE(RunTraining(fp32, nullptr).ok());
  ASSERT_TRUE(RunTraining(bf16, nullptr).ok());
  EXPECT_EQ(ops::GetMatmulPrecision(), ops::MatmulPrecision::kFp32);  // restored after the run
  const std::vector<double> a = Losses(fp32.work_dir), b = Losses(bf16.work_dir);
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  double most = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(b[i], a[i], 5e-3 * a[i]) << "step " << i + 1;
    most = std::max(most, std::abs(b[i] - a[i]) / a[i]);
  }
  EXPECT_GT(most, 1e-6) << "bf16 gave the fp32 losses exactly: was it used?";
}

TEST(Trainer, ExportLoadsBackWithTheSameWeightsAndTokenizer) {
  TrainConfig c = TinyRun("export");
  c.steps = 2;
  c.export_at_end = true;
  c.export_dtype = "fp32";
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(fs::exists(r->export_dir + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(r->export_dir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(r->export_dir + "/config.json"));
  auto exported = LoadHfModel(r->export_dir);
  ASSERT_TRUE(exported.ok()) << exported.status().message();
  auto ckpt = ReadCheckpointParams(r->last_checkpoint, (*exported)->config());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
  ASSERT_EQ(int64_t(ckpt->size()), (*exported)->params().numel());
  EXPECT_EQ(std::memcmp((*exported)->params().data(), ckpt->data(), ckpt->size() * 4), 0);
}

TEST(Trainer, AWarmupLongerThanTheRunIsAnErrorBeforeAnyDataIsRead) {
  TrainConfig c = TinyRun("warmup");
  c.steps = 3;
  c.warmup_steps = 20;
  auto r = RunTraining(c, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("warmup_steps = 20 is more than total_steps = 3"),
            std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(c.work_dir + "/cache")) << "the data was tokenized first";
}

TEST(Trainer, MalformedLineStopsBeforeTraining) {
  TrainConfig c = TinyRun("bad");
  std::ofstream(c.datasets[0].path, std::ios::app) << "{\"messages\": [}\n";
  auto r = RunTraining(c, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(c.datasets[0].path + ":301:"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(c.work_dir + "/metrics.jsonl"));
  c.on_bad_sample = "skip";
  EXPECT_TRUE(RunTraining(c, nullptr).ok());
}

TEST(Trainer, VocabularyMismatchIsAnErrorBeforeAnyWork) {
  TrainConfig c = TinyRun("vocab");
  nlohmann::json mc = testing::JsonFile(c.model_config);
  mc["vocab_size"] = 1000;
  std::ofstream(c.model_config) << DumpJson(mc);
  auto r = RunTraining(c, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("vocab_size is 1000"), std::string::npos)
      << r.status().message();
}

// A one-step run's checkpoint, and one rank's buffers to load it into.
struct OneStepRun {
  TrainConfig config;
  std::string checkpoint;
  ModelConfig model;
  Mesh mesh;
  std::vector<OwnedRange> owned;
  std::vector<float> params;
  std::optional<AdamW> optim;
  ShardState shard() { return {&owned, params.data(), &*optim}; }
};

void RunOneStep(const std::string& tag, OneStepRun* run) {
  run->config = TinyRun(tag);
  run->config.steps = 1;
  auto r = RunTraining(run->config, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  run->checkpoint = r->last_checkpoint;
  auto mc = ModelConfig::Load(run->checkpoint + "/config.json");
  ASSERT_TRUE(mc.ok()) << mc.status().message();
  run->model = *mc;
  auto mesh = MakeMesh(1, 0, 1, run->model);
  ASSERT_TRUE(mesh.ok());
  run->mesh = *mesh;
  run->owned = OwnedRanges(run->model, run->mesh);
  const int64_t n = ParamLayout(run->model).total();
  run->params.assign(n, 0.0f);
  auto adamw = AdamW::Create({}, {{0, n, true}}, n);
  ASSERT_TRUE(adamw.ok());
  run->optim.emplace(std::move(*adamw));
}

TEST(TrainCheckpoint, ABrokenShardIndexIsANamedError) {
  OneStepRun run;
  ASSERT_NO_FATAL_FAILURE(RunOneStep("badindex", &run));
  const TrainConfig& c = run.config;
  const std::string& checkpoint = run.checkpoint;
  const ModelConfig& mc = run.model;
  const std::string index = checkpoint + "/shards.json";
  std::ifstream in(index);
  const nlohmann::json good = testing::Json(in);
  auto expect_error = [&](const nlohmann::json& j, const std::string& what) {
    std::ofstream(index) << DumpJson(j);
    auto p = ReadCheckpointParams(checkpoint, mc);
    ASSERT_FALSE(p.ok()) << what;
    EXPECT_NE(p.status().message().find("shards.json"), std::string::npos) << p.status().message();
    EXPECT_NE(p.status().message().find(what), std::string::npos) << p.status().message();
  };
  nlohmann::json j = good;
  j["total"] = 5;
  expect_error(j, "the checkpoint holds 5 parameters");
  j = good;
  j["files"][0]["ranges"][0][2] = -7;
  expect_error(j, "a bad range");
  j = good;
  j["files"][0] = "shard";
  expect_error(j, "a bad entry");
  j = good;
  j["files"][0]["ranges"].erase(0);
  expect_error(j, "the shards cover");
  j = good;
  j.erase("total");
  expect_error(j, "missing \"total\"");
  j = good;
  j["files"][0]["ranges"].push_back(j["files"][0]["ranges"][0]);
  expect_error(j, "overlap");
  j = good;
  j["files"][0]["ranges"][0][2] = uint64_t(1) << 63;
  expect_error(j, "a bad range");
  std::ofstream(index) << DumpJson(good);
  ASSERT_TRUE(ReadCheckpointParams(checkpoint, mc).ok());
  // trainer_state.json: a wrong type is a named error, not an exception.
  const std::string state = checkpoint + "/trainer_state.json";
  nlohmann::json st = testing::JsonFile(state);
  st["optimizer_step"] = "4";
  std::ofstream(state) << DumpJson(st);
  TrainState ts;
  Status s = LoadTrainCheckpoint(checkpoint, mc, run.shard(), &ts);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("\"optimizer_step\" must be an integer"), std::string::npos)
      << s.message();
  // A directory that only looks like a checkpoint is never "latest".
  fs::create_directories(c.work_dir + "/checkpoints/step-best");
  std::ofstream(c.work_dir + "/checkpoints/step-best/trainer_state.json") << "{}";
  EXPECT_EQ(FindLatestCheckpoint(c.work_dir), checkpoint);
}

TEST(TrainCheckpoint, AFailedSaveKeepsThePreviousCheckpoint) {
  OneStepRun run;
  ASSERT_NO_FATAL_FAILURE(RunOneStep("disk", &run));
  const TrainConfig& c = run.config;
  const ModelConfig& mc = run.model;
  std::unique_ptr<Comm> world = MakeSingleComm();
  ASSERT_EQ(run.owned.size(), 1u);  // one rank owns the whole slab, in one merged range
  EXPECT_EQ(run.owned[0].size, ParamLayout(mc).total());
  TrainState st;
  const ShardState shard = run.shard();
  ASSERT_TRUE(LoadTrainCheckpoint(run.checkpoint, mc, shard, &st).ok());
  st.step = 2;
  // A full disk: files may not grow past 4 KiB while saving.
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old;
  getrlimit(RLIMIT_FSIZE, &old);
  rlimit small = old;
  small.rlim_cur = 4096;
  setrlimit(RLIMIT_FSIZE, &small);
  std::string saved;
  Status s = SaveTrainCheckpoint(*world, c.work_dir, mc, run.mesh, shard, st, 1, &saved);
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, SIG_DFL);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("earlier checkpoints are intact"), std::string::npos) << s.message();
  EXPECT_EQ(FindLatestCheckpoint(c.work_dir), run.checkpoint);
  EXPECT_FALSE(fs::exists(c.work_dir + "/checkpoints/step-00000002.tmp"));
  EXPECT_TRUE(ReadCheckpointParams(run.checkpoint, mc).ok());
}

}  // namespace
}  // namespace xt

namespace xt {
namespace {

TEST(Trainer, AFreshRunNeverOverwritesAnotherRunsCheckpoints) {
  TrainConfig c = TinyRun("fresh");
  c.steps = 4;
  c.checkpoint_every = 2;
  ASSERT_TRUE(RunTraining(c, nullptr).ok());
  auto again = RunTraining(c, nullptr);
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("already holds checkpoints"), std::string::npos)
      << again.status().message();
  // Resuming from the earlier checkpoint starts a new history: later checkpoints go, so that
  // --resume auto continues this run and not the old one.
  TrainConfig branch = c;
  branch.resume = c.work_dir + "/checkpoints/step-00000002";
  branch.steps = 3;
  auto r = RunTraining(branch, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->last_checkpoint, c.work_dir + "/checkpoints/step-00000003");
  EXPECT_EQ(FindLatestCheckpoint(c.work_dir), r->last_checkpoint);
  EXPECT_FALSE(fs::exists(c.work_dir + "/checkpoints/step-00000004"));
}

TEST(Trainer, AStepWithoutLossTokensIsSkippedNotCountedAsZeroLoss) {
  TrainConfig c = TinyRun("noloss");
  c.max_length = 8;  // every assistant answer is truncated away
  c.steps = 2;
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::ifstream in(c.work_dir + "/metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    auto j = testing::Json(line);
    EXPECT_TRUE(j["skipped"].get<bool>()) << line;
    EXPECT_TRUE(j["loss"].is_null()) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 2);
}

}  // namespace
}  // namespace xt
