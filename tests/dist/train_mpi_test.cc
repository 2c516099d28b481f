// Distributed training as a user runs it: `mpirun -np N xtuner train ...` on the demo model
// (Qwen3-MoE, 4 experts, top-2, tied embeddings). The same global batch gives the same losses
// on 1 rank and on 2 and 4 (dp only, ep only, dp x ep), on CPUs and on GPUs; a checkpoint of 4
// ranks resumes on 2 and on 1. (A rank that dies or fails: train_mpi_failures_test.cc.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "util/cli.h"
#include "util/demo_mpi.h"
#include "util/testing.h"
#include "util/tiny_run.h"
#include "xtuner/core/safetensors.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using testing::CliRun;

const std::string& kRoot = testing::DemoRoot();
using testing::DemoArgs;
using testing::DemoMpi;

using testing::Losses;

void ExpectSameLosses(const std::vector<double>& want, const std::vector<double>& got,
                      size_t offset = 0) {
  ASSERT_EQ(got.size() + offset, want.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[offset + i], 1e-5 * std::abs(want[offset + i]))
        << "step " << offset + i + 1;
}

// The single-process run every mesh is compared with (computed once).
const std::string& ReferenceDir() {
  static const std::string dir = [] {
    const std::string d = testing::TempDir("mpi_ref");
    CliRun r = testing::RunXtuner(DemoArgs(d, 20), kRoot);
    EXPECT_EQ(r.code, 0) << r.output;
    return d;
  }();
  return dir;
}
const std::vector<double>& Reference() {
  static const std::vector<double> losses = Losses(ReferenceDir());
  return losses;
}

struct MeshCase {
  int np, ep;
  const char* extra;
};

class SameLoss : public ::testing::TestWithParam<MeshCase> {};

TEST_P(SameLoss, AsOnOneRank) {
  const MeshCase c = GetParam();
  const std::string dir = testing::TempDir("mpi_eq");
  CliRun r =
      DemoMpi(c.np, DemoArgs(dir, 20, "--set parallel.ep=" + std::to_string(c.ep) + " " + c.extra));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string mesh = std::to_string(c.np) + " ranks = dp " + std::to_string(c.np / c.ep) +
                           " x ep " + std::to_string(c.ep);
  EXPECT_NE(r.output.find(mesh), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("model   parameters"), r.output.rfind("model   parameters"))
      << "only rank 0 prints the summary\n"
      << r.output;
  ASSERT_EQ(Reference().size(), 20u);
  ExpectSameLosses(Reference(), Losses(dir));
  // The balancing loss is a small part of the loss: compared on its own, it tells the global
  // batch's loss from an average of per-micro-batch ones (they differ by ~1e-4 relative here).
  ExpectSameLosses(testing::Metric(ReferenceDir(), "aux_loss"), testing::Metric(dir, "aux_loss"));
}

INSTANTIATE_TEST_SUITE_P(Meshes, SameLoss,
                         ::testing::Values(MeshCase{1, 1, ""}, MeshCase{2, 1, ""},
                                           MeshCase{2, 2, ""}, MeshCase{4, 1, ""},
                                           MeshCase{4, 4, ""},
                                           // one micro-batch of 2 rows per rank: router
                                           // statistics pooled over the ranks, not pre-passed
                                           MeshCase{2, 2, "--set train.micro_batch_size=2"},
                                           // recompute gathers every layer a second time
                                           MeshCase{4, 2, "--set model.recompute=1"}));

TEST(Distributed, PerRankStateFallsAsOneOverRanks) {
  auto per_rank_mib = [](const std::string& out) {
    const size_t at = out.find("per rank");
    return at == std::string::npos ? -1.0
                                   : std::stod(out.substr(out.find_first_of("0123456789", at)));
  };
  const double one = per_rank_mib(DemoMpi(1, DemoArgs(testing::TempDir("mem1"), 2)).output);
  const double two = per_rank_mib(DemoMpi(2, DemoArgs(testing::TempDir("mem2"), 2)).output);
  const double four =
      per_rank_mib(DemoMpi(4, DemoArgs(testing::TempDir("mem4"), 2, "--set parallel.ep=2")).output);
  ASSERT_GT(one, 0);
  EXPECT_NEAR(two, one / 2, 0.1 * one / 2);
  EXPECT_NEAR(four, one / 4, 0.1 * one / 4);
}

// The number (in MiB) after `key` in `text`, with its unit (KiB, MiB or GiB); -1 if absent.
double MibAfter(const std::string& text, const std::string& key) {
  const size_t at = text.find(key);
  if (at == std::string::npos) return -1;
  const size_t num = text.find_first_of("0123456789", at + key.size());
  size_t used = 0;
  const double v = std::stod(text.substr(num), &used);
  const std::string unit = text.substr(num + used, 4);
  return unit.find("KiB") != std::string::npos   ? v / 1024
         : unit.find("GiB") != std::string::npos ? v * 1024
                                                 : v;
}

// xtuner plan's figures for 4 ranks (dp 2 x ep 2) agree with what the engine measures.
TEST(Distributed, ThePlannerAgreesWithTheEngine) {
  CliRun run = DemoMpi(4, DemoArgs(testing::TempDir("mpi_plan"), 2, "--set parallel.ep=2"));
  ASSERT_EQ(run.code, 0) << run.output;
  CliRun plan =
      testing::RunXtuner("plan --model examples/demo/config.json --seq 64 --world 4 --ep 2", kRoot);
  ASSERT_EQ(plan.code, 0) << plan.output;
  const double state = MibAfter(plan.output, "weights (fp32 master, sharded)") +
                       MibAfter(plan.output, "gradients (fp32, sharded)") +
                       MibAfter(plan.output, "AdamW moments (fp32 m and v, sharded)");
  EXPECT_NEAR(state, MibAfter(run.output, "per rank"), 0.1 * state) << plan.output << run.output;
  const double gathered = MibAfter(plan.output, "embedding's");
  EXPECT_NEAR(gathered, MibAfter(run.output, "gradient buffers (ZeRO-3):"), 0.1 * gathered)
      << plan.output << run.output;
  const double acts = MibAfter(plan.output, "activations, recompute 0/2");
  EXPECT_NEAR(acts, MibAfter(run.output, "activations kept for the backward:"), 0.1 * acts)
      << plan.output << run.output;
}

TEST(Distributed, ACheckpointOfFourRanksResumesOnTwoAndOne) {
  const std::string dir = testing::TempDir("mpi_resume");
  CliRun r = DemoMpi(
      4, DemoArgs(dir + "/four", 20,
                  "--set parallel.ep=2 --set checkpoint.every=10 --set checkpoint.keep_last=2"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string step10 = dir + "/four/checkpoints/step-00000010";
  ASSERT_TRUE(fs::exists(step10 + "/shard-00003-of-00004.safetensors")) << r.output;
  ASSERT_TRUE(fs::exists(step10 + "/shards.json"));
  for (const std::string run : {"two", "one"}) {
    fs::create_directories(dir + "/" + run + "/checkpoints");
    fs::copy(step10, dir + "/" + run + "/checkpoints/step-00000010", fs::copy_options::recursive);
  }
  r = DemoMpi(2, DemoArgs(dir + "/two", 20, "--resume auto --set parallel.ep=1"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  ExpectSameLosses(Reference(), Losses(dir + "/two"), 10);
  r = testing::RunXtuner(DemoArgs(dir + "/one", 20, "--resume auto"), kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(Reference(), Losses(dir + "/one"), 10);
  // And the 4-rank checkpoint converts to a Hugging Face model.
  r = testing::RunXtuner("convert --checkpoint " + step10 + " --out " + dir + "/hf --dtype fp32",
                         kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/hf/model.safetensors"));
}

// The eval's lines of a run's output: its five examples and its accuracy.
std::vector<std::string> EvalLines(const std::string& output) {
  std::vector<std::string> lines;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("eval: ", 0) == 0 || line.rfind("  eval: ", 0) == 0) lines.push_back(line);
  return lines;
}

// sft from a Hugging Face model: each rank loads only its shard (and its experts); the run ends
// with an export and an eval over the shards, whose answers are those of one process.
TEST(Distributed, SftFromAnHfModelOnTwoExpertParallelRanksAsOnOne) {
  const std::string dir = testing::TempDir("mpi_sft");
  CliRun r = testing::RunXtuner(DemoArgs(dir + "/base", 2) + " --set export.at_end=true", kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string sft = "sft --load-from " + dir +
                          "/base/hf --dataset examples/demo/train.jsonl --chat-template chatml "
                          "--steps 6 --max-length 64 --global-batch-size 4 --lr 1e-3 --set "
                          "schedule.warmup_steps=1 --set eval.file=examples/demo/eval.jsonl "
                          "--set eval.max_new_tokens=4 --work-dir ";
  r = testing::RunXtuner(sft + dir + "/one", kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<std::string> one = EvalLines(r.output);
  ASSERT_EQ(one.size(), 6u) << r.output;
  r = DemoMpi(2, sft + dir + "/two --set parallel.ep=2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(EvalLines(r.output), one) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/two/hf/model.safetensors"));
  ExpectSameLosses(Losses(dir + "/one"), Losses(dir + "/two"));
}

// The routed experts' adapters (PEFT's target_parameters), for LoraSftOfABase.
const char kExpertLora[] =
    " --lora-target-parameters mlp.experts.gate_up_proj,mlp.experts.down_proj";

// Exports a base model (2 steps of the demo) into `dir`/base/hf; returns the arguments of a
// 6-step LoRA sft run of it (rank 4 on the attention, and `lora`: by default dropout 0.1, whose
// masks follow each row's place in the global batch, whichever rank runs it), to be followed by
// its work dir.
std::string LoraSftOfABase(const std::string& dir,
                           const std::string& lora = " --lora-dropout 0.1") {
  CliRun r = testing::RunXtuner(DemoArgs(dir + "/base", 2) + " --set export.at_end=true", kRoot);
  EXPECT_EQ(r.code, 0) << r.output;
  return "sft --load-from " + dir +
         "/base/hf --dataset examples/demo/train.jsonl --chat-template chatml "
         "--steps 6 --max-length 64 --global-batch-size 4 --lr 1e-2 --lora-rank 4" +
         lora + " --set schedule.warmup_steps=1 --set eval.file= --work-dir ";
}

// LoRA on the attention of the demo's Qwen3-MoE trains to the same losses on 2 ZeRO-3 ranks and
// on dp 2 x ep 2 as on one: the adapters' gradients are reduce-scattered like any other, the
// frozen experts' not at all. Each run writes its merged model and its adapter.
TEST(Distributed, LoraOnZeroAndExpertParallelRanksAsOnOne) {
  const std::string dir = testing::TempDir("mpi_lora");
  const std::string sft = LoraSftOfABase(dir);
  if (HasFailure()) return;
  CliRun r = testing::RunXtuner(sft + dir + "/one", kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("LoRA"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("dropout 0.1 on"), std::string::npos) << r.output;
  const std::vector<double> one = Losses(dir + "/one");
  ASSERT_EQ(one.size(), 6u);
  r = DemoMpi(2, sft + dir + "/two");
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(one, Losses(dir + "/two"));
  r = DemoMpi(4, sft + dir +
                     "/four --set parallel.ep=2 --set checkpoint.every=3 --set "
                     "checkpoint.keep_last=2");
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(one, Losses(dir + "/four"));
  EXPECT_TRUE(fs::exists(dir + "/four/hf/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/four/hf-adapter/adapter_model.safetensors"));
  // Its step-3 checkpoint (the adapters of 4 ranks) resumes on 2 ranks with the base's weights.
  testing::SeedResumeDir(dir + "/four", 3, dir + "/resumed");
  r = DemoMpi(2, sft + dir + "/resumed --resume auto");
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(one, Losses(dir + "/resumed"), 3);
}

// LoRA on the routed experts too: their adapters are laid out and sharded with their experts
// (over the dp group under expert parallelism), and train to the same losses on dp 2 x ep 2 as
// on one; the adapter each run writes (gathered, stacked as PEFT's) is the same; the 4 ranks'
// step-3 checkpoint resumes on 2 expert-parallel ranks.
TEST(Distributed, LoraOnTheExpertsOnExpertParallelRanksAsOnOne) {
  const std::string dir = testing::TempDir("mpi_lora_experts");
  const std::string sft = LoraSftOfABase(dir, kExpertLora);
  if (HasFailure()) return;
  CliRun r = testing::RunXtuner(sft + dir + "/one", kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("mlp.experts.gate_up_proj,mlp.experts.down_proj"), std::string::npos)
      << r.output;
  const std::vector<double> one = Losses(dir + "/one");
  ASSERT_EQ(one.size(), 6u);
  r = DemoMpi(4, sft + dir +
                     "/four --set parallel.ep=2 --set checkpoint.every=3 --set "
                     "checkpoint.keep_last=2");
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(one, Losses(dir + "/four"));
  auto mine = SafetensorsFile::Open(dir + "/one/hf-adapter/adapter_model.safetensors");
  auto theirs = SafetensorsFile::Open(dir + "/four/hf-adapter/adapter_model.safetensors");
  ASSERT_TRUE(mine.ok() && theirs.ok());
  ASSERT_EQ(mine->names(), theirs->names());
  int experts = 0;
  for (const std::string& name : mine->names()) {
    experts += name.find(".mlp.experts.") != std::string::npos;
    auto a = mine->Get(name), b = theirs->Get(name);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ(a->shape(), b->shape()) << name;
    EXPECT_LE(testing::RelError(a->f32(), b->f32(), a->numel()), 1e-4) << name;
  }
  EXPECT_GT(experts, 0);
  testing::SeedResumeDir(dir + "/four", 3, dir + "/resumed");
  r = DemoMpi(2, sft + dir + "/resumed --resume auto --set parallel.ep=2");
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(one, Losses(dir + "/resumed"), 3);
}

// `steps` steps of the model `model` (--set arguments) on 1 rank, on 2 expert-parallel ranks and
// on dp 2 x ep 2: the same losses. The single rank's output, for checks of its own.
std::string ExpectExpertMeshesAsOnOne(const std::string& dir, const std::string& model, int steps) {
  CliRun r = testing::RunXtuner(DemoArgs(dir + "/one", steps, model), kRoot);
  EXPECT_EQ(r.code, 0) << r.output;
  const std::vector<double> one = Losses(dir + "/one");
  EXPECT_EQ(one.size(), size_t(steps));
  for (int np : {2, 4}) {
    const std::string run = dir + "/np" + std::to_string(np);
    CliRun m = DemoMpi(np, DemoArgs(run, steps, model + " --set parallel.ep=2"));
    EXPECT_EQ(m.code, 0) << m.output;
    ExpectSameLosses(one, Losses(run));
  }
  return r.output;
}

// DeepSeek-V3 (MLA, sigmoid group-limited router with a shared expert and the correction bias
// moved each step) trains to the same losses on 2 expert-parallel ranks and on dp 2 x ep 2 as on
// one: the bias update reads the step's counts of all ranks, so every rank moves its part of the
// biases alike.
TEST(Distributed, DeepseekV3OnExpertParallelRanksAsOnOne) {
  const std::string dir = testing::TempDir("mpi_dsv3");
  std::ofstream(dir + "/config.json") << testing::TinyDeepseekV3Config();
  // A bias speed of 0.01: over 8 steps the biases move enough to change choices, so a rank that
  // moved its part of them wrongly would change the losses.
  const std::string model =
      " --set model.model_config=" + dir + "/config.json --set train.router_bias_update_speed=0.01";
  const std::string one = ExpectExpertMeshesAsOnOne(dir, model, 8);
  EXPECT_NE(one.find("aux-loss-free"), std::string::npos) << one;
}

// GPT-OSS (sinks, a sliding window, biases on the router and on the experts a rank holds): the
// losses of 2 expert-parallel ranks and of dp 2 x ep 2 are one rank's.
TEST(Distributed, GptOssOnExpertParallelRanksAsOnOne) {
  const std::string dir = testing::TempDir("mpi_gpt_oss");
  std::ofstream(dir + "/config.json") << testing::TinyGptOssConfig();
  ExpectExpertMeshesAsOnOne(dir, " --set model.model_config=" + dir + "/config.json", 6);
}

// 6 rows on 4 ranks: rank r takes rows [6r/4, 6(r+1)/4), 1, 2, 1 and 2 of them, so a rank short
// of a row runs an empty micro-batch to stay in step; 2 rows on 4 ranks leave two ranks with
// none at all (their experts still serve the others). The loss is the single process's.
TEST(Distributed, AGlobalBatchThatIsNotAMultipleOfTheRanksIsSplitUnevenly) {
  const std::string dir = testing::TempDir("mpi_uneven");
  const std::string six = "--set train.global_batch_size=6 ";
  CliRun r = testing::RunXtuner(DemoArgs(dir + "/one", 8, six), kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int ep : {2, 4}) {
    const std::string out = dir + "/ep" + std::to_string(ep);
    r = DemoMpi(4, DemoArgs(out, 8,
                            six + "--set parallel.ep=" + std::to_string(ep) +
                                (ep == 4 ? " --set train.micro_batch_size=2" : "")));
    ASSERT_EQ(r.code, 0) << r.output;
    ExpectSameLosses(Losses(dir + "/one"), Losses(out));
    ExpectSameLosses(testing::Metric(dir + "/one", "aux_loss"), testing::Metric(out, "aux_loss"));
    ExpectSameLosses(testing::Metric(dir + "/one", "tokens"), testing::Metric(out, "tokens"));
  }
  const std::string two = "--set train.global_batch_size=2 ";
  r = testing::RunXtuner(DemoArgs(dir + "/one2", 4, two), kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  r = DemoMpi(4, DemoArgs(dir + "/ep4_2", 4, two + "--set parallel.ep=4"));
  ASSERT_EQ(r.code, 0) << r.output;
  ExpectSameLosses(Losses(dir + "/one2"), Losses(dir + "/ep4_2"));
  ExpectSameLosses(testing::Metric(dir + "/one2", "aux_loss"),
                   testing::Metric(dir + "/ep4_2", "aux_loss"));
}

TEST(Distributed, AnImpossibleMeshIsAClearErrorBeforeAnyWork) {
  const std::string dir = testing::TempDir("mpi_mesh");
  CliRun r = DemoMpi(2, DemoArgs(dir, 2, "--set parallel.ep=3"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("parallel.ep = 3 does not divide the 2 ranks"), std::string::npos)
      << r.output;
  r = DemoMpi(4, DemoArgs(dir, 2, "--set parallel.ep=2 --set train.global_batch_size=5"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("global_batch_size = 5 rows cannot be split evenly over the 2 "
                          "data-parallel groups (4 ranks = dp 2 x ep 2): make it a multiple of 2"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("rank "), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/metrics.jsonl"));
}

// The GPUs this process may use: the device nodes (/dev/nvidiaN, numbered as on the host, so a
// container given one GPU may see only /dev/nvidia3), fewer when CUDA_VISIBLE_DEVICES names fewer.
// In a build for the CUDA emulator (scripts/test-cuda-emu.sh), xtuner's GPUs are emulated.
int VisibleGpus() {
#ifdef XT_EMULATED_GPUS
  return XT_EMULATED_GPUS;
#endif
  int nodes = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator("/dev", ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 6 && name.rfind("nvidia", 0) == 0 &&
        name.find_first_not_of("0123456789", 6) == std::string::npos)
      ++nodes;
  }
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (!visible) return nodes;
  const std::string v = visible;
  if (v.empty()) return 0;
  return std::min<int>(nodes, 1 + int(std::count(v.begin(), v.end(), ',')));
}

// ZeRO-3 and expert parallelism on GPUs (train.device = "cuda" under mpirun: units gathered and
// gradients reduce-scattered, the experts' rows all-to-all) give the single-process CPU run's
// losses: fp32 to its round-off compounded over 10 steps; bf16 (the GPU's attention in bf16 too,
// the CPU's in fp32) with rows split unevenly, so that one rank runs an empty micro-batch while
// its experts serve the other's rows. Two GPUs: over NCCL. One GPU (the lent machines): both
// ranks on it, collectives through MPI on host copies (parallel.gpu_comm = "mpi"), the same
// device code otherwise. Under the CUDA emulator: both. Then DeepSeek-V3 and GPT-OSS on 2
// expert-parallel GPU ranks. Skipped without a GPU.
constexpr int kGpuSteps = 10;
const char kBf16Args[] = "--set train.precision=bf16 --set train.global_batch_size=3";

struct CpuLosses {
  std::vector<double> fp32, bf16;
};

void GpuMeshesFollowTheCpuRun(const std::string& comm, const CpuLosses& cpu) {
  struct Case {
    const char* extra;
    bool bf16;
    double rel;
  };
  for (const Case& c :
       {Case{"--set parallel.ep=1", false, 1e-3}, Case{"--set parallel.ep=2", false, 1e-3},
        Case{"--set parallel.ep=2 --set model.recompute=1", false, 1e-3},
        Case{"--set parallel.ep=2", true, 2e-2}}) {
    const std::string extra = c.bf16 ? kBf16Args + std::string(" ") + c.extra : c.extra;
    const std::vector<double>& want = c.bf16 ? cpu.bf16 : cpu.fp32;
    const std::string dir = testing::TempDir("mpi_gpu_eq");
    CliRun r = DemoMpi(
        2, DemoArgs(dir, kGpuSteps,
                    "--set train.device=cuda --set parallel.gpu_comm=" + comm + " " + extra));
    ASSERT_EQ(r.code, 0) << extra << "\n" << r.output;
    EXPECT_NE(r.output.find("ZeRO-3 over " + std::string(comm == "nccl" ? "NCCL" : "MPI")),
              std::string::npos)
        << r.output;
    const std::vector<double> got = Losses(dir);
    ASSERT_EQ(got.size(), want.size()) << extra;
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_NEAR(got[i], want[i], c.rel * std::abs(want[i])) << extra << " step " << i + 1;
  }
}

// Each step's tokens per expert of every MoE layer (metrics.jsonl), as its JSON text.
std::vector<std::string> TokensPerExpert(const std::string& work_dir) {
  std::vector<std::string> steps;
  std::ifstream in(work_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = testing::Json(line);
    if (j.contains("tokens_per_expert")) steps.push_back(j["tokens_per_expert"].dump());
  }
  return steps;
}

// A model of its own (config.json text) on 2 expert-parallel GPU ranks: the single-process CPU
// run's losses, and its choices of experts at every step. DeepSeek-V3 (latent attention, a
// dense first layer, a shared expert, the sigmoid router with its bias moved on the GPUs after
// each step: a bias moved wrongly on either rank would change the choices); GPT-OSS (sinks, a
// sliding window, biases on the router and on the experts a rank holds, the clamped GLU).
void ModelGpuMeshFollowsTheCpuRun(const std::string& comm, const std::string& name,
                                  const std::string& config_json) {
  SCOPED_TRACE(name);
  const std::string dir = testing::TempDir("mpi_gpu_" + name);
  std::ofstream(dir + "/config.json") << config_json;
  const std::string model =
      " --set model.model_config=" + dir + "/config.json --set train.router_bias_update_speed=0.01";
  CliRun cpu = testing::RunXtuner(DemoArgs(dir + "/cpu", 8, model), kRoot);
  ASSERT_EQ(cpu.code, 0) << cpu.output;
  CliRun gpu = DemoMpi(2, DemoArgs(dir + "/gpu", 8,
                                   model +
                                       " --set train.device=cuda --set parallel.ep=2 "
                                       "--set parallel.gpu_comm=" +
                                       comm));
  ASSERT_EQ(gpu.code, 0) << gpu.output;
  const std::vector<double> want = Losses(dir + "/cpu"), got = Losses(dir + "/gpu");
  ASSERT_EQ(want.size(), 8u);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-3 * std::abs(want[i])) << name << " step " << i + 1;
  EXPECT_EQ(TokensPerExpert(dir + "/gpu"), TokensPerExpert(dir + "/cpu"));
}

// LoRA (the demo model's attention adapted) on 2 expert-parallel GPU ranks: each layer's unit
// gathered, only its adapters' gradients reduce-scattered, the frozen experts' products without
// weight gradients; the single-process CPU run's losses, and the merged model and adapter written.
void LoraGpuMeshFollowsTheCpuRun(const std::string& comm, const std::string& lora) {
  const std::string dir = testing::TempDir("mpi_gpu_lora");
  const std::string sft = LoraSftOfABase(dir, lora);
  if (::testing::Test::HasFailure()) return;
  CliRun r = testing::RunXtuner(sft + dir + "/cpu", kRoot);
  ASSERT_EQ(r.code, 0) << r.output;
  r = DemoMpi(
      2, sft + dir +
             "/gpu --set train.device=cuda --set parallel.ep=2 --set parallel.gpu_comm=" + comm);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::vector<double> want = Losses(dir + "/cpu"), got = Losses(dir + "/gpu");
  ASSERT_EQ(want.size(), 6u);
  ASSERT_EQ(got.size(), want.size());
  const std::vector<double> want_norm = testing::Metric(dir + "/cpu", "grad_norm");
  const std::vector<double> got_norm = testing::Metric(dir + "/gpu", "grad_norm");
  ASSERT_EQ(got_norm.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-3 * std::abs(want[i])) << "LoRA step " << i + 1;
    EXPECT_NEAR(got_norm[i], want_norm[i], 1e-3 * want_norm[i]) << "LoRA step " << i + 1;
  }
  EXPECT_TRUE(fs::exists(dir + "/gpu/hf/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/gpu/hf-adapter/adapter_model.safetensors"));
}

// A LoRA run in bf16 on 2 GPU ranks (dp 2, and ep 2) holds its frozen matmul weights in bf16 in
// the shards (train.cuda_frozen_weights = "auto"; a gather widens them): the run that keeps them
// in fp32 ("fp32"), bit for bit (losses and gradient norms), in less device memory (the metrics'
// peak), and the summary says which it did.
void LoraBf16GpuMeshHoldsTheFrozenWeightsInBf16(const std::string& comm) {
  const std::string dir = testing::TempDir("mpi_gpu_lora16");
  const std::string sft = LoraSftOfABase(dir, kExpertLora);
  if (::testing::Test::HasFailure()) return;
  for (const char* ep : {"1", "2"}) {
    SCOPED_TRACE(std::string("parallel.ep = ") + ep);
    const std::string run =
        " --set train.device=cuda --set train.precision=bf16 --set parallel.ep=" + std::string(ep) +
        " --set parallel.gpu_comm=" + comm;
    const std::string a = dir + "/bf16-" + ep, b = dir + "/fp32-" + ep;
    CliRun r = DemoMpi(2, sft + a + run);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("LoRA's frozen matmul weights in bf16 only"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("the frozen matmul weights in bf16"), std::string::npos) << r.output;
    r = DemoMpi(2, sft + b + run + " --set train.cuda_frozen_weights=fp32");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output.find("in bf16 only"), std::string::npos) << r.output;
    ASSERT_EQ(Losses(a).size(), 6u);
    EXPECT_EQ(Losses(a), Losses(b));
    EXPECT_EQ(testing::Metric(a, "grad_norm"), testing::Metric(b, "grad_norm"));
    const std::vector<double> peak16 = testing::Metric(a, "peak_memory_bytes");
    const std::vector<double> peak32 = testing::Metric(b, "peak_memory_bytes");
    ASSERT_FALSE(peak16.empty() || peak32.empty());
    EXPECT_LT(peak16.back(), peak32.back());
  }
}

TEST(Distributed, GpuMeshesFollowTheCpuRun) {
  const int gpus = VisibleGpus();
  if (gpus < 1) GTEST_SKIP() << "skipped: no GPU";
  CpuLosses cpu;  // the single-process CPU runs, fp32 and bf16
  for (bool bf16 : {false, true}) {
    const std::string dir = testing::TempDir("mpi_gpu_ref");
    CliRun r = testing::RunXtuner(DemoArgs(dir, kGpuSteps, bf16 ? kBf16Args : ""), kRoot);
    ASSERT_EQ(r.code, 0) << r.output;
    std::vector<double>& losses = bf16 ? cpu.bf16 : cpu.fp32;
    losses = Losses(dir);
    ASSERT_EQ(losses.size(), size_t(kGpuSteps));
  }
#ifdef XT_EMULATED_GPUS
  for (const std::string comm : {"nccl", "mpi"}) {
#else
  for (const std::string comm : {gpus >= 2 ? "nccl" : "mpi"}) {
#endif
    SCOPED_TRACE("parallel.gpu_comm = " + comm);
    GpuMeshesFollowTheCpuRun(comm, cpu);
  }
  const std::string comm = gpus >= 2 ? "nccl" : "mpi";
  ModelGpuMeshFollowsTheCpuRun(comm, "dsv3", testing::TinyDeepseekV3Config());
  ModelGpuMeshFollowsTheCpuRun(comm, "gpt_oss", testing::TinyGptOssConfig());
  LoraGpuMeshFollowsTheCpuRun(comm, " --lora-dropout 0.1");
  LoraGpuMeshFollowsTheCpuRun(comm, kExpertLora);  // the experts' adapters' grouped products
  LoraBf16GpuMeshHoldsTheFrozenWeightsInBf16(comm);
}

// Distributed GPU training where no GPU is (this machine, CI): a named error on every rank
// before any work, whether xtuner was built with CUDA (no device) or without (no backend).
TEST(Distributed, GpuTrainingWithoutAGpuIsAClearErrorBeforeAnyWork) {
  if (VisibleGpus() > 0) GTEST_SKIP() << "skipped: a GPU is present, no error to see";
  const std::string dir = testing::TempDir("mpi_gpu");
  for (const char* mesh : {"", " --set parallel.ep=2"}) {  // ZeRO-3, and with expert parallelism
    CliRun r = DemoMpi(2, DemoArgs(dir, 2, std::string("--set train.device=cuda") + mesh));
    EXPECT_NE(r.code, 0);
    EXPECT_TRUE(r.output.find("no usable CUDA device") != std::string::npos ||
                r.output.find("built without that backend") != std::string::npos)
        << r.output;
    EXPECT_FALSE(fs::exists(dir + "/metrics.jsonl"));
    EXPECT_FALSE(fs::exists(dir + "/cache"));
  }
}

}  // namespace
}  // namespace xt
