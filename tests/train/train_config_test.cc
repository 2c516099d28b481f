// Training configs: TOML parsing, overrides, clear errors, and docs/config.md kept in sync.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "util/testing.h"
#include "xtuner/train/config.h"

namespace xt {
namespace {

const char* kConfig = R"(
work_dir = "runs/a"
[model]
load_from = "models/qwen3"
recompute = 0.5
[data]
chat_template = "qwen3"
max_length = 4096
[[data.datasets]]
path = "a.jsonl"
[[data.datasets]]
path = "b.jsonl"
ratio = 2
kind = "chat"
[train]
steps = 10
global_batch_size = 4
micro_batch_size = 2
[optim]
lr = 3e-4
weight_decay = 0
[schedule]
type = "linear"
warmup_steps = 2
)";

std::string Error(const std::string& text) {
  TrainConfig c;
  return ParseTrainConfig(text, "cfg.toml", &c).message();
}

TEST(TrainConfig, ParsesEveryKindOfKey) {
  TrainConfig c;
  ASSERT_TRUE(ParseTrainConfig(kConfig, "cfg.toml", &c).ok());
  EXPECT_EQ(c.work_dir, "runs/a");
  EXPECT_EQ(c.load_from, "models/qwen3");
  EXPECT_DOUBLE_EQ(c.recompute, 0.5);
  EXPECT_EQ(c.max_length, 4096);
  ASSERT_EQ(c.datasets.size(), 2u);
  EXPECT_EQ(c.datasets[1].path, "b.jsonl");
  EXPECT_DOUBLE_EQ(c.datasets[1].ratio, 2.0);
  EXPECT_EQ(c.datasets[1].kind, "chat");
  EXPECT_DOUBLE_EQ(c.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.0);  // an integer where a float is expected is fine
  EXPECT_EQ(c.schedule, "linear");
  EXPECT_EQ(c.keep_last, 2);  // untouched default
  EXPECT_TRUE(ValidateTrainConfig(c).ok()) << ValidateTrainConfig(c).message();
}

TEST(TrainConfig, UnknownKeysGetASuggestionAndWrongTypesThePath) {
  EXPECT_EQ(Error("[optim]\nlearning_rate = 1e-4\n"),
            "cfg.toml: unknown key 'optim.learning_rate' (did you mean 'optim.lr'?); see "
            "docs/config.md for every key");
  EXPECT_EQ(Error("[train]\nstpes = 3\n"),
            "cfg.toml: unknown key 'train.stpes' (did you mean 'train.steps'?); see "
            "docs/config.md for every key");
  EXPECT_EQ(Error("[data]\nmax_length = \"long\"\n"),
            "cfg.toml: data.max_length must be an integer, found string \"long\"");
  EXPECT_EQ(Error("[train]\nsteps = 1.5\n"), "cfg.toml: train.steps must be an integer, found 1.5");
  EXPECT_NE(Error("[model\n").find("cfg.toml:1:"), std::string::npos) << Error("[model\n");
  EXPECT_NE(Error("[[data.datasets]]\nratio = 1\n").find("data.datasets[0] has no path"),
            std::string::npos);
  EXPECT_NE(Error("[[data.datasets]]\npath = \"a\"\nweight = 1\n")
                .find("unknown key 'data.datasets[0].weight'"),
            std::string::npos);
}

TEST(TrainConfig, OverridesUseTomlValuesAndCheckKeys) {
  TrainConfig c;
  ASSERT_TRUE(ParseTrainConfig(kConfig, "cfg.toml", &c).ok());
  ASSERT_TRUE(ApplyOverride("optim.lr=1e-3", &c).ok());
  EXPECT_DOUBLE_EQ(c.lr, 1e-3);
  ASSERT_TRUE(ApplyOverride("data.chat_template=llama3", &c).ok());  // bare word
  EXPECT_EQ(c.chat_template, "llama3");
  ASSERT_TRUE(ApplyOverride("export.at_end=false", &c).ok());
  EXPECT_FALSE(c.export_at_end);
  ASSERT_TRUE(ApplyOverride("data.datasets=[{path=\"x.jsonl\", ratio=0.5}]", &c).ok());
  ASSERT_EQ(c.datasets.size(), 1u);
  EXPECT_DOUBLE_EQ(c.datasets[0].ratio, 0.5);
  EXPECT_EQ(ApplyOverride("optim.lrr=1", &c).message(),
            "--set optim.lrr=1: unknown key 'optim.lrr' (did you mean 'optim.lr'?); see "
            "docs/config.md for every key");
  EXPECT_EQ(ApplyOverride("train.steps=many", &c).message(),
            "--set train.steps=many: train.steps must be an integer, found string \"many\"");
  EXPECT_FALSE(ApplyOverride("novalue", &c).ok());
  // TOML reads 2025-08-05 as a date: data.current_date takes it as its text.
  ASSERT_TRUE(ApplyOverride("data.current_date=2025-08-05", &c).ok());
  EXPECT_EQ(c.current_date, "2025-08-05");
  EXPECT_EQ(ApplyOverride("data.tokenizer=2025-08-05", &c).message(),
            "--set data.tokenizer=2025-08-05: data.tokenizer must be a string, found 2025-08-05");
}

TEST(TrainConfig, ValidationNamesTheKey) {
  TrainConfig c;
  ASSERT_TRUE(ParseTrainConfig(kConfig, "cfg.toml", &c).ok());
  c.global_batch_size = 5;
  EXPECT_NE(ValidateTrainConfig(c).message().find("must be a multiple of train.micro_batch_size"),
            std::string::npos);
  c.global_batch_size = 4;
  c.model_config = "x/config.json";
  EXPECT_NE(ValidateTrainConfig(c).message().find("exactly one of model.load_from"),
            std::string::npos);
  c.model_config.clear();
  c.on_bad_sample = "ignore";
  EXPECT_NE(ValidateTrainConfig(c).message().find("data.on_bad_sample must be error or skip"),
            std::string::npos);
  c.on_bad_sample = "skip";
  c.gpu_comm = "gloo";
  EXPECT_NE(ValidateTrainConfig(c).message().find("parallel.gpu_comm must be nccl or mpi"),
            std::string::npos);
  c.gpu_comm = "nccl";
  c.export_dtype = "fp8";
  EXPECT_TRUE(ValidateTrainConfig(c).ok());
  c.export_dtype = "int4";
  EXPECT_NE(
      ValidateTrainConfig(c).message().find("export.dtype must be bf16, fp32 or fp8, not int4"),
      std::string::npos);
  c.export_dtype = "bf16";
  // A path with a byte that is not UTF-8 (Latin-1 e-grave), from --set or --model: refused
  // before it is written into the run's JSON and TOML files as another path.
  const std::string latin1 = "/data/mod\xe8le";
  for (std::string* path : {&c.load_from, &c.datasets[0].path, &c.lora_adapter}) {
    const std::string keep = *path;
    *path = latin1;
    EXPECT_NE(ValidateTrainConfig(c).message().find("is not valid UTF-8 (byte 10)"),
              std::string::npos)
        << ValidateTrainConfig(c).message();
    *path = keep;
  }
  EXPECT_EQ(ValidateTrainConfig(c).message().find("UTF-8"), std::string::npos);
  // The harmony template's options, before any model or data is read.
  c.reasoning_effort = "hgih";
  EXPECT_EQ(ValidateTrainConfig(c).message(),
            "config: data.reasoning_effort \"hgih\" is not low, medium or high");
  c.reasoning_effort = "high";
  c.current_date = "2025-02-29";
  EXPECT_EQ(ValidateTrainConfig(c).message(),
            "config: data.current_date \"2025-02-29\" is not a date written YYYY-MM-DD");
  c.current_date = "2024-02-29";
  EXPECT_TRUE(ValidateTrainConfig(c).ok());
}

// The GPU kernel choices (and how a LoRA run's frozen weights are held): named values only, on
// train.device = "cuda" only, and the bf16-only ones with train.precision = "bf16"; each error
// names the key.
TEST(TrainConfig, CudaKernelChoicesAreCheckedAgainstDeviceAndPrecision) {
  TrainConfig c;
  ASSERT_TRUE(ParseTrainConfig(kConfig, "cfg.toml", &c).ok());
  ASSERT_TRUE(ValidateTrainConfig(c).ok());
  auto message = [&] { return ValidateTrainConfig(c).message(); };
  c.device = "cuda";
  c.precision = "bf16";
  for (const char* a : {"auto", "wmma", "mma"})
    for (const char* g : {"auto", "cublas-grouped", "xtuner-grouped", "per-expert"}) {
      c.cuda_attention = a;
      c.cuda_experts_gemm = g;
      EXPECT_TRUE(ValidateTrainConfig(c).ok()) << a << " " << g << ": " << message();
    }
  c.cuda_attention = "flash";
  EXPECT_NE(message().find("train.cuda_attention must be auto, wmma or mma, not \"flash\""),
            std::string::npos)
      << message();
  c.cuda_attention = "mma";
  c.cuda_experts_gemm = "cutlass";
  EXPECT_NE(message().find("train.cuda_experts_gemm must be auto, cublas-grouped"),
            std::string::npos)
      << message();
  c.cuda_experts_gemm = "xtuner-grouped";
  c.precision = "fp32";
  EXPECT_NE(message().find("train.cuda_attention picks the bf16 attention's kernels"),
            std::string::npos)
      << message();
  c.cuda_attention = "auto";
  EXPECT_NE(message().find("xtuner-grouped\" is a bf16 kernel"), std::string::npos) << message();
  c.cuda_experts_gemm = "per-expert";
  EXPECT_TRUE(ValidateTrainConfig(c).ok()) << message();  // fp32 per expert
  c.device = "cpu";
  EXPECT_NE(message().find("train.cuda_experts_gemm is for train.device = \"cuda\""),
            std::string::npos)
      << message();
  // How a LoRA run's frozen weights are held: auto or fp32, on the GPU.
  c.cuda_experts_gemm = "auto";
  c.cuda_frozen_weights = "fp32";
  EXPECT_NE(message().find("train.cuda_frozen_weights is for train.device = \"cuda\""),
            std::string::npos)
      << message();
  c.device = "cuda";
  EXPECT_TRUE(ValidateTrainConfig(c).ok()) << message();
  c.cuda_frozen_weights = "bf16";
  EXPECT_NE(message().find("train.cuda_frozen_weights must be auto or fp32, not \"bf16\""),
            std::string::npos)
      << message();
}

TEST(TrainConfig, EffectiveTomlRoundTrips) {
  TrainConfig a;
  ASSERT_TRUE(ParseTrainConfig(kConfig, "cfg.toml", &a).ok());
  TrainConfig b;
  const std::string text = ConfigToToml(a);
  ASSERT_TRUE(ParseTrainConfig(text, "effective.toml", &b).ok()) << text;
  EXPECT_EQ(ConfigToToml(b), text);
  EXPECT_EQ(b.datasets.size(), 2u);
}

TEST(TrainConfig, DocsConfigMdIsTheSchema) {
  std::ifstream in(testing::DataPath("../../docs/config.md"));
  ASSERT_TRUE(in) << "docs/config.md is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), ConfigReferenceMarkdown())
      << "docs/config.md is out of date: regenerate it with `xtuner train --config-reference`";
}

}  // namespace
}  // namespace xt
