// LoRA training end to end on a tiny Qwen3-MoE exported by a short full run: only the adapters
// move, the export is merged and its PEFT adapter is written beside it, a run starts from an
// adapter, resume is bit-exact and refuses other [lora] settings, `xtuner convert` gives the same
// merged model and adapter, and bad settings are refused before training; the same with adapters
// on the routed experts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/cli.h"
#include "util/testing.h"
#include "util/tiny_run.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"
#include "xtuner/train/train_checkpoint.h"
#include "xtuner/train/trainer.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using testing::Losses;
using testing::TinyRun;

const std::string& BaseModel() { return testing::LoraBaseModel(); }
using testing::LoraRun;

// Every tensor of a safetensors checkpoint (a directory or file), by name.
std::map<std::string, std::vector<float>> Tensors(const std::string& path) {
  auto ckpt = SafetensorsCheckpoint::Open(path);
  XT_CHECK(ckpt.ok(), ckpt.status().message());
  std::map<std::string, std::vector<float>> out;
  for (const std::string& n : ckpt->names()) {
    auto info = ckpt->Info(n);
    auto t = ckpt->GetF32(n, info->shape);
    XT_CHECK(t.ok(), t.status().message());
    out[n].assign(t->f32(), t->f32() + t->numel());
  }
  return out;
}

// The adapter a run wrote beside its export gives that export: merged by LoadHfModel, and in
// generation with the base (the KV-cached path) as the merged model generates. `tag` names the
// temporary directory.
void ExpectTheAdapterGivesTheExport(const std::string& adapter, const std::string& export_dir,
                                    const std::string& tokenizer, const std::string& tag) {
  auto merged = LoadHfModel(BaseModel(), adapter);
  ASSERT_TRUE(merged.ok()) << merged.status().message();
  const std::string again = testing::TempDir(tag);
  ASSERT_TRUE(SaveHfModel(**merged, again, ExportDType::kF32).ok());
  EXPECT_EQ(Tensors(again), Tensors(export_dir));
  const std::string gen =
      "generate --prompt 'reverse: a b c' --chat-template chatml "
      "--max-new-tokens 6 --tokenizer " +
      tokenizer + " --model ";
  auto with_adapter = testing::RunXtuner(gen + BaseModel() + " --adapter " + adapter);
  auto with_merged = testing::RunXtuner(gen + export_dir);
  ASSERT_EQ(with_adapter.code, 0) << with_adapter.output;
  ASSERT_EQ(with_merged.code, 0) << with_merged.output;
  EXPECT_EQ(with_adapter.output, with_merged.output);
}

// xtuner convert gives a run's merged export and adapter back from its checkpoint.
void ExpectConvertGivesTheExport(const std::string& checkpoint, const std::string& export_dir,
                                 const std::string& adapter, const std::string& out) {
  auto cli = testing::RunXtuner("convert --checkpoint " + checkpoint + " --out " + out +
                                "/hf --dtype fp32 --adapter-out " + out + "/adapter");
  ASSERT_EQ(cli.code, 0) << cli.output;
  EXPECT_EQ(Tensors(out + "/hf"), Tensors(export_dir));
  EXPECT_EQ(Tensors(out + "/adapter/adapter_model.safetensors"),
            Tensors(adapter + "/adapter_model.safetensors"));
}

// Resumes the 6-step run `run` from its step-3 checkpoint (exporting nothing): it repeats steps
// 4-6 bit for bit. The resumed run's config.
TrainConfig ExpectResumeRepeatsTheLastSteps(const TrainConfig& run) {
  TrainConfig resumed = testing::ResumedRun(run, 3);
  resumed.export_at_end = false;
  auto r = RunTraining(resumed, nullptr);
  EXPECT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> a = Losses(run.work_dir), b = Losses(resumed.work_dir);
  EXPECT_EQ(a.size(), 6u);
  EXPECT_EQ(b.size(), 3u);
  for (size_t i = 0; i < b.size() && 3 + i < a.size(); ++i)
    EXPECT_EQ(b[i], a[3 + i]) << "step " << 4 + i;
  return resumed;
}

TEST(LoraTraining, OnlyTheAdaptersTrainAndTheExportIsMergedWithItsAdapter) {
  TrainConfig c = LoraRun("lora_train");
  c.steps = 12;
  c.export_at_end = true;
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> losses = Losses(c.work_dir);
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_LT(losses.back(), losses.front());

  // The checkpoint: base weights exactly as loaded, adapters moved (B from zero).
  auto mc = ModelConfig::Load(r->last_checkpoint + "/config.json");
  ASSERT_TRUE(mc.ok());
  auto lora = ReadCheckpointLora(r->last_checkpoint);
  ASSERT_TRUE(lora.ok()) << lora.status().message();
  EXPECT_EQ(lora->targets, (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"}));
  mc->lora = *lora;
  auto params = ReadCheckpointParams(r->last_checkpoint, *mc);
  ASSERT_TRUE(params.ok()) << params.status().message();
  const auto base = Tensors(BaseModel());
  const ParamLayout layout(*mc);
  int adapters = 0;
  for (const ParamInfo& p : layout.params()) {
    const float* got = params->data() + p.offset;
    const int64_t n = NumElements(p.shape);
    if (p.lora) {
      ++adapters;
      double norm = 0;
      for (int64_t i = 0; i < n; ++i) norm += double(got[i]) * got[i];
      EXPECT_GT(norm, 0) << p.name;
      continue;
    }
    ASSERT_EQ(base.count(p.name), 1u) << p.name;
    EXPECT_EQ(std::vector<float>(got, got + n), base.at(p.name)) << p.name << " moved";
  }
  EXPECT_EQ(adapters, 2 * 4 * 2);

  // The export is the base with the adapters merged (q, k, v, o changed, nothing else), and the
  // adapter beside it gives that same merge.
  const auto exported = Tensors(r->export_dir);
  int changed = 0;
  for (const auto& [name, w] : exported) {
    ASSERT_EQ(base.count(name), 1u) << name;
    if (w != base.at(name)) {
      ++changed;
      EXPECT_NE(name.find("self_attn."), std::string::npos) << name;
    }
  }
  EXPECT_EQ(changed, 2 * 4);
  const std::string adapter = r->export_dir + "-adapter";
  ASSERT_TRUE(fs::exists(adapter + "/adapter_model.safetensors"));
  const nlohmann::json j = testing::JsonFile(adapter + "/adapter_config.json");
  EXPECT_EQ(j["base_model_name_or_path"], fs::absolute(BaseModel()).lexically_normal().string());
  EXPECT_EQ(j["r"], 4);
  ExpectTheAdapterGivesTheExport(adapter, r->export_dir, c.tokenizer, "lora_again");

  // A run that starts from that adapter with lr 0 exports the same model.
  TrainConfig from = LoraRun("lora_from_adapter");
  from.lora_adapter = adapter;
  from.steps = 1;
  from.lr = 0;
  from.warmup_steps = 0;
  from.export_at_end = true;
  auto rf = RunTraining(from, nullptr);
  ASSERT_TRUE(rf.ok()) << rf.status().message();
  EXPECT_EQ(Tensors(rf->export_dir), exported);
  EXPECT_EQ(Tensors(rf->export_dir + "-adapter/adapter_model.safetensors"),
            Tensors(adapter + "/adapter_model.safetensors"));
  // ... and one whose rank differs from the adapter's is refused, naming both.
  from.lora_rank = 8;
  from.work_dir += "-rank8";
  auto bad = RunTraining(from, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("r is 4, but lora.rank is 8"), std::string::npos)
      << bad.status().message();

  const std::string out = testing::TempDir("lora_convert");
  ExpectConvertGivesTheExport(r->last_checkpoint, r->export_dir, adapter, out);
  auto no_adapter =
      testing::RunXtuner("convert --checkpoint " + BaseModel() + "/../checkpoints/" +
                         "step-00000002 --out " + out + "/x --adapter-out " + out + "/y");
  EXPECT_NE(no_adapter.code, 0);
  EXPECT_NE(no_adapter.output.find("not from a LoRA run"), std::string::npos) << no_adapter.output;
}

TEST(LoraTraining, ResumeIsBitExactAndOtherLoraSettingsAreRefused) {
  TrainConfig straight = LoraRun("lora_straight");
  ASSERT_TRUE(RunTraining(straight, nullptr).ok());
  TrainConfig first = LoraRun("lora_split");
  first.checkpoint_every = 3;
  ASSERT_TRUE(RunTraining(first, nullptr).ok());
  const std::string ckpt3 = first.work_dir + "/checkpoints/step-00000003";
  ASSERT_TRUE(fs::exists(ckpt3));
  TrainConfig resumed = testing::ResumedRun(first, 3);
  TrainConfig other = resumed;  // the same checkpoint, another rank
  auto r = RunTraining(resumed, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> a = Losses(straight.work_dir), b = Losses(resumed.work_dir);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[3 + i], b[i]) << "step " << 4 + i;

  // The checkpoint holds the adapters and their moments, not the frozen weights.
  const ParamLayout layout([&] {
    auto mc = ModelConfig::Load(ckpt3 + "/config.json");
    XT_CHECK(mc.ok(), "config");
    auto lora = ReadCheckpointLora(ckpt3);
    XT_CHECK(lora.ok(), "lora");
    mc->lora = *lora;
    return *mc;
  }());
  int64_t adapters = 0;
  for (const ParamInfo& p : layout.params())
    if (p.lora) adapters += NumElements(p.shape);
  const int64_t shard_bytes = int64_t(fs::file_size(ckpt3 + "/shard-00000-of-00001.safetensors"));
  EXPECT_LT(shard_bytes, 3 * 4 * adapters + 16384) << "a LoRA checkpoint holds the adapters only";
  EXPECT_LT(3 * 4 * adapters, layout.total());

  other.work_dir = first.work_dir + "-other";
  fs::create_directories(other.work_dir + "/checkpoints");
  fs::copy(ckpt3, other.work_dir + "/checkpoints/step-00000003", fs::copy_options::recursive);
  other.lora_rank = 2;
  auto bad = RunTraining(other, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("this checkpoint was trained with LoRA"), std::string::npos)
      << bad.status().message();
  other.lora_rank = 0;
  other.lora_alpha = TrainConfig().lora_alpha;
  other.lora_target_modules = TrainConfig().lora_target_modules;
  bad = RunTraining(other, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("this run has no LoRA"), std::string::npos)
      << bad.status().message();
}

// LoRA on the routed experts too (lora.target_parameters): only the adapters move, the export
// merges them into each expert's gate_proj, up_proj and down_proj, resume is bit-exact (and
// refuses other target_parameters), and `xtuner convert` gives the run's adapter back.
// A 6-step LoRA run with adapters on the routed experts' `target_parameters` too, exported at
// the end, with a checkpoint at step 3.
TrainConfig ExpertLoraRun(const std::string& tag, const std::string& target_parameters) {
  TrainConfig c = LoraRun(tag);
  c.lora_target_parameters = target_parameters;
  c.checkpoint_every = 3;
  c.export_at_end = true;
  return c;
}

TEST(LoraTraining, ExpertAdaptersTrainMergeResumeAndConvert) {
  const TrainConfig c =
      ExpertLoraRun("lora_experts", "mlp.experts.gate_up_proj,mlp.experts.down_proj");
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> losses = Losses(c.work_dir);
  ASSERT_EQ(losses.size(), 6u);

  // The experts' adapters moved (B from zero), every base weight is as loaded.
  auto mc = ModelConfig::Load(r->last_checkpoint + "/config.json");
  ASSERT_TRUE(mc.ok());
  auto lora = ReadCheckpointLora(r->last_checkpoint);
  ASSERT_TRUE(lora.ok()) << lora.status().message();
  EXPECT_EQ(lora->expert_targets,
            (std::vector<std::string>{"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}));
  mc->lora = *lora;
  auto params = ReadCheckpointParams(r->last_checkpoint, *mc);
  ASSERT_TRUE(params.ok()) << params.status().message();
  const auto base = Tensors(BaseModel());
  double expert_b = 0;
  const ParamLayout layout(*mc);
  for (const ParamInfo& p : layout.params()) {
    const float* got = params->data() + p.offset;
    const int64_t n = NumElements(p.shape);
    if (p.lora && p.name.find(".experts.") != std::string::npos &&
        p.name.find("lora_B") != std::string::npos)
      for (int64_t i = 0; i < n; ++i) expert_b += double(got[i]) * got[i];
    if (p.lora) continue;
    ASSERT_EQ(base.count(p.name), 1u) << p.name;
    EXPECT_EQ(std::vector<float>(got, got + n), base.at(p.name)) << p.name;
  }
  EXPECT_GT(expert_b, 0);

  // The export changed experts' weights (besides attention's), nothing else.
  const auto exported = Tensors(r->export_dir);
  int experts = 0;
  for (const auto& [name, w] : exported) {
    ASSERT_EQ(base.count(name), 1u) << name;
    if (w != base.at(name)) {
      const bool expert = name.find(".experts.") != std::string::npos;
      experts += expert;
      EXPECT_TRUE(expert || name.find("self_attn.") != std::string::npos) << name;
    }
  }
  EXPECT_GT(experts, 0);
  const std::string adapter = r->export_dir + "-adapter";
  const nlohmann::json j = testing::JsonFile(adapter + "/adapter_config.json");
  EXPECT_EQ(j["target_parameters"],
            nlohmann::json({"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}));
  ExpectTheAdapterGivesTheExport(adapter, r->export_dir, c.tokenizer, "lora_experts_again");

  TrainConfig other = ExpectResumeRepeatsTheLastSteps(c);
  other.work_dir = c.work_dir + "-other";
  other.lora_target_parameters = "mlp.experts.down_proj";
  testing::SeedResumeDir(c.work_dir, 3, other.work_dir);
  auto bad = RunTraining(other, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("this checkpoint was trained with LoRA"), std::string::npos)
      << bad.status().message();

  ExpectConvertGivesTheExport(r->last_checkpoint, r->export_dir, adapter,
                              testing::TempDir("lora_experts_convert"));
}

// One layer's experts (OpenAI's GPT-OSS recipe's form): the checkpoint keeps the targets as PEFT
// names them, so convert and resume read them back.
TEST(LoraTraining, OneLayersExpertAdaptersConvertAndResume) {
  const TrainConfig c = ExpertLoraRun("lora_layer_experts", "1.mlp.experts.down_proj");
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const nlohmann::json j = testing::JsonFile(r->last_checkpoint + "/config.json");
  EXPECT_EQ(j["xtuner_lora"]["target_parameters"], nlohmann::json({"1.mlp.experts.down_proj"}));
  ExpectConvertGivesTheExport(r->last_checkpoint, r->export_dir, r->export_dir + "-adapter",
                              testing::TempDir("lora_layer_experts_convert"));
  ExpectResumeRepeatsTheLastSteps(c);
}

// LoRA's dropout: its masks follow each row's place in the global batch, so a run with
// micro-batches of one row gives the losses of one with two, a resumed run repeats the steps
// bit for bit, and the masks move the losses away from a run without dropout. The adapter
// written beside the export records the rate.
TEST(LoraTraining, DropoutIsTheSameForAnyMicroBatchSizeAndResumesExactly) {
  TrainConfig two = LoraRun("lora_dropout_two");
  two.lora_dropout = 0.2;
  two.checkpoint_every = 3;
  two.export_at_end = true;
  ASSERT_TRUE(RunTraining(two, nullptr).ok());
  TrainConfig one = LoraRun("lora_dropout_one");
  one.lora_dropout = 0.2;
  one.micro_batch_size = 1;
  ASSERT_TRUE(RunTraining(one, nullptr).ok());
  TrainConfig none = LoraRun("lora_dropout_none");
  ASSERT_TRUE(RunTraining(none, nullptr).ok());
  const std::vector<double> a = Losses(two.work_dir), b = Losses(one.work_dir),
                            c = Losses(none.work_dir);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  ASSERT_EQ(c.size(), 6u);
  double moved = 0;
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(b[i], a[i], 1e-5 * a[i]) << "step " << i + 1;
    moved = std::max(moved, std::abs(a[i] - c[i]));
  }
  EXPECT_GT(moved, 1e-3) << "the masks changed nothing";

  ExpectResumeRepeatsTheLastSteps(two);

  // The adapters the run exports, and the one xtuner convert gives back (from the run's
  // config.toml), record the rate.
  const std::string out = testing::TempDir("lora_dropout_convert");
  auto cli = testing::RunXtuner("convert --checkpoint " + two.work_dir +
                                "/checkpoints/step-00000006 --out " + out + "/hf --adapter-out " +
                                out + "/adapter");
  ASSERT_EQ(cli.code, 0) << cli.output;
  for (const std::string& dir : {two.work_dir + "/hf-adapter", out + "/adapter"}) {
    std::ifstream in(dir + "/adapter_config.json");
    ASSERT_TRUE(in.good()) << dir;
    EXPECT_DOUBLE_EQ(nlohmann::json::parse(in)["lora_dropout"].get<double>(), 0.2) << dir;
  }
  // The checkpoint keeps the rate in trainer_state.json; a rate that is no number is named.
  const std::string ckpt = two.work_dir + "/checkpoints/step-00000006";
  auto lora = ReadCheckpointLora(ckpt);
  ASSERT_TRUE(lora.ok()) << lora.status().message();
  EXPECT_DOUBLE_EQ(lora->dropout, 0.2);
  nlohmann::json state = nlohmann::json::parse(std::ifstream(ckpt + "/trainer_state.json"));
  state["lora_dropout"] = "0.2";
  std::ofstream(ckpt + "/trainer_state.json") << state.dump();
  lora = ReadCheckpointLora(ckpt);
  ASSERT_FALSE(lora.ok());
  EXPECT_NE(lora.status().message().find("trainer_state.json: \"lora_dropout\" must be a number"),
            std::string::npos)
      << lora.status().message();
}

// A LoRA checkpoint names its base by fingerprint: resume and convert refuse a base that
// changed, and say what they need when it is gone.
TEST(LoraTraining, ACheckpointRefusesAChangedOrMissingBase) {
  const std::string base = testing::TempDir("lora_own_base");
  fs::copy(BaseModel(), base, fs::copy_options::recursive);
  TrainConfig c = LoraRun("lora_base_check");
  c.load_from = base;
  c.tokenizer.clear();  // the base's own, which convert --base takes from where the base moved
  c.steps = 2;
  auto r = RunTraining(c, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::string out = testing::TempDir("lora_base_convert");
  auto ok = testing::RunXtuner("convert --checkpoint " + r->last_checkpoint + " --out " + out +
                               "/a --dtype fp32");
  ASSERT_EQ(ok.code, 0) << ok.output;
  const std::string moved = testing::TempDir("lora_moved_base") + "/base";
  fs::copy(base, moved, fs::copy_options::recursive);
  // Another base of the same shapes: one weight changed.
  auto tensors = Tensors(base);
  tensors.begin()->second[0] += 1.0f;
  std::vector<std::pair<std::string, Tensor>> changed;
  for (auto& [name, w] : tensors) {
    auto info = SafetensorsCheckpoint::Open(base)->Info(name);
    Tensor t = Tensor::Empty(DType::F32, info->shape);
    std::memcpy(t.f32(), w.data(), w.size() * sizeof(float));
    changed.emplace_back(name, t);
  }
  ASSERT_TRUE(WriteSafetensors(base + "/model.safetensors", changed).ok());
  TrainConfig resumed = c;
  resumed.resume = "auto";
  resumed.steps = 4;
  auto rr = RunTraining(resumed, nullptr);
  ASSERT_FALSE(rr.ok());
  EXPECT_NE(rr.status().message().find("model.load_from is another"), std::string::npos)
      << rr.status().message();
  auto bad = testing::RunXtuner("convert --checkpoint " + r->last_checkpoint + " --out " + out +
                                "/b --dtype fp32");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("is not this LoRA run's"), std::string::npos) << bad.output;
  fs::remove_all(base);
  bad = testing::RunXtuner("convert --checkpoint " + r->last_checkpoint + " --out " + out +
                           "/c --dtype fp32");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("holds the adapters only"), std::string::npos) << bad.output;
  // The base, moved: --base names it, and the same model comes out.
  auto again = testing::RunXtuner("convert --checkpoint " + r->last_checkpoint + " --out " + out +
                                  "/d --dtype fp32 --base " + moved);
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_EQ(Tensors(out + "/d"), Tensors(out + "/a"));
  EXPECT_TRUE(fs::exists(out + "/d/tokenizer.json"));
}

TEST(LoraTraining, BadSettingsAreRefusedBeforeTraining) {
  auto error = [](const std::string& toml) {
    TrainConfig c;
    Status st = ParseTrainConfig(toml, "test.toml", &c);
    if (st.ok()) st = ValidateTrainConfig(c);
    return st.ok() ? std::string("ok") : st.message();
  };
  const std::string base =
      "work_dir = \"w\"\n[model]\nload_from = \"m\"\n[[data.datasets]]\npath = \"d.jsonl\"\n";
  EXPECT_EQ(error(base + "[lora]\nrank = 8\nalpha = 16.0\n"), "ok");
  EXPECT_EQ(error(base + "[lora]\nrank = 8\ndropout = 0.05\n"), "ok");
  EXPECT_NE(
      error(base + "[lora]\nrank = 8\ndropout = 1.0\n").find("lora.dropout must be in [0, 1)"),
      std::string::npos);
  EXPECT_NE(error(base + "[lora]\nrank = 8\ndropout = -0.1\n").find("lora.dropout"),
            std::string::npos);
  EXPECT_NE(error(base + "[lora]\nrank = 8\ndropout = nan\n").find("not nan"), std::string::npos);
  EXPECT_NE(error(base + "[lora]\ndropout = 0.1\n").find("lora.dropout is set but lora.rank is 0"),
            std::string::npos);
  EXPECT_NE(error(base + "[lora]\nalpha = 32.0\n").find("lora.rank is 0"), std::string::npos);
  EXPECT_NE(error(base + "[lora]\nrank = -1\n").find("lora.rank"), std::string::npos);
  EXPECT_NE(error(base + "[lora]\nrank = 8\nalpha = 0.0\n").find("lora.alpha"), std::string::npos);
  EXPECT_NE(error(base + "[lora]\nlora_alpha = 8.0\n").find("lora.alpha"), std::string::npos);
  EXPECT_NE(error(base + "[lora]\nrslora = true\n").find("lora.rslora is set but lora.rank is 0"),
            std::string::npos);
  const std::string random_init =
      "work_dir = \"w\"\n[model]\nmodel_config = \"c.json\"\n[[data.datasets]]\npath = "
      "\"d.jsonl\"\n[lora]\nrank = 4\n";
  EXPECT_NE(error(random_init).find("set model.load_from"), std::string::npos);

  TrainConfig moe = LoraRun("lora_bad");
  moe.lora_target_modules = "q_proj,gate_proj";
  auto r = RunTraining(moe, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("lora.target_modules: \"gate_proj\""), std::string::npos)
      << r.status().message();
  TrainConfig experts_dropout = LoraRun("lora_experts_dropout");
  experts_dropout.lora_target_parameters = "mlp.experts.down_proj";
  experts_dropout.lora_dropout = 0.1;
  r = RunTraining(experts_dropout, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("lora.dropout must be 0 with lora.target_parameters"),
            std::string::npos)
      << r.status().message();
  EXPECT_NE(error(base + "[lora]\ntarget_parameters = \"down_proj\"\n")
                .find("lora.target_parameters is set but lora.rank is 0"),
            std::string::npos);
  TrainConfig huge = LoraRun("lora_huge");
  huge.lora_alpha = 1e40;  // alpha / rank overflows fp32
  r = RunTraining(huge, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("finite fp32 scale"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace xt
