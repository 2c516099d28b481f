// xtuner train / sft / generate / convert as a user runs them, and Ctrl-C during training.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "util/cli.h"
#include "util/testing.h"
#include "xtuner/core/file_util.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

const std::string kRoot = testing::DataPath("../..");

using testing::CliRun;

CliRun Xtuner(const std::string& args) { return testing::RunXtuner(args, kRoot); }

// A short demo run: a tiny model so the whole test stays fast.
std::string TinyDemoArgs(const std::string& work_dir, int steps) {
  return "train examples/demo.toml --set work_dir=" + work_dir +
         " --set train.steps=" + std::to_string(steps) +
         " --set schedule.warmup_steps=1 --set data.max_length=64 --set train.global_batch_size=2"
         " --set train.micro_batch_size=1 --set eval.max_new_tokens=4 --set log.every=1"
         " --set checkpoint.every=1";
}

TEST(TrainCli, TrainExportGenerateSftConvert) {
  const std::string dir = testing::TempDir("traincli");
  CliRun r = Xtuner(TinyDemoArgs(dir + "/demo", 3));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("model   parameters"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("step 3/3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("eval: "), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/demo/hf/tokenizer.json"));

  r = Xtuner("generate --model " + dir +
             "/demo/hf --prompt 'reverse: a b c' --chat-template chatml "
             "--max-new-tokens 3");
  EXPECT_EQ(r.code, 0) << r.output;

  // The base model's generation settings, which transformers' generate reads beside the weights.
  std::ofstream(dir + "/demo/hf/generation_config.json") << R"({"eos_token_id": [1, 2]})";

  // sft on the exported checkpoint (its tokenizer.json is found beside the weights).
  r = Xtuner("sft --load-from " + dir +
             "/demo/hf --dataset examples/demo/train.jsonl "
             "--chat-template chatml --work-dir " +
             dir +
             "/sft --steps 2 --max-length 64 "
             "--global-batch-size 2 --set schedule.warmup_steps=0 --set export.at_end=false");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/sft/metrics.jsonl"));

  // From another directory, with a trailing slash: the run's config.toml has absolute paths.
  r = testing::RunXtuner("convert --checkpoint " + dir + "/demo/checkpoints/step-00000003/ --out " +
                             dir + "/converted --dtype fp32",
                         "/");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/converted/tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir + "/converted/model.safetensors"));

  // The sft run's checkpoint converts with the files transformers reads beside the weights:
  // those beside its tokenizer (here a directory of its own, given by --tokenizer) and its base
  // model's generation settings. A new directory (spelled with a trailing slash) appears whole.
  const std::string tok = dir + "/tok", sft_step = dir + "/sft/checkpoints/step-00000002";
  fs::create_directories(tok);
  fs::copy_file(dir + "/demo/hf/tokenizer.json", tok + "/tokenizer.json");
  std::ofstream(tok + "/chat_template.jinja") << "{{ messages[0]['content'] }}";
  std::ofstream(tok + "/tokenizer_config.json") << R"({"model_max_length": 64})";
  std::ofstream(tok + "/special_tokens_map.json") << R"({"eos_token": "<|im_end|>"})";
  r = Xtuner("convert --checkpoint " + sft_step + " --out " + dir + "/converted_sft/ --tokenizer " +
             tok);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto read = [](const std::string& path) {
    Result<std::string> text = ReadFileToString(path);
    return text.ok() ? *text : text.status().message();
  };
  for (const char* f : {"tokenizer.json", "chat_template.jinja", "tokenizer_config.json",
                        "special_tokens_map.json", "generation_config.json"}) {
    const std::string from =
        f == std::string("generation_config.json") ? dir + "/demo/hf/" : tok + "/";
    ASSERT_TRUE(fs::exists(dir + "/converted_sft/" + f)) << f;
    EXPECT_EQ(read(dir + "/converted_sft/" + f), read(from + f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir + "/converted_sft.converting"));
  EXPECT_FALSE(fs::exists(dir + "/converted_sft/.xtuner-converting"));

  // A failure after the weights (a tokenizer that cannot be copied: a pipe) leaves no new
  // directory, nor the partial one.
  ASSERT_EQ(mkfifo((dir + "/pipe.json").c_str(), 0600), 0);
  r = Xtuner("convert --checkpoint " + sft_step + " --out " + dir + "/failed --tokenizer " + dir +
             "/pipe.json");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("convert to " + dir + "/failed: " + dir + "/pipe.json: cannot copy"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir + "/failed"));
  EXPECT_FALSE(fs::exists(dir + "/failed.converting"));
  // A killed convert's partial directory is cleared; a directory of that name that is not one is
  // an error that keeps it.
  fs::create_directories(dir + "/mine.converting");
  std::ofstream(dir + "/mine.converting/keep.txt") << "mine";
  r = Xtuner("convert --checkpoint " + sft_step + " --out " + dir + "/mine");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("is not an unfinished convert's output"), std::string::npos) << r.output;
  EXPECT_EQ(read(dir + "/mine.converting/keep.txt"), "mine");
  std::ofstream(dir + "/mine.converting/.xtuner-converting");
  r = Xtuner("convert --checkpoint " + sft_step + " --out " + dir + "/mine");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir + "/mine/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/mine.converting"));

  // An existing directory is written into, and its other files stay.
  std::ofstream(dir + "/converted_sft/NOTES.md") << "mine";
  fs::remove(dir + "/converted_sft/model.safetensors");
  r = Xtuner("convert --checkpoint " + sft_step + " --out " + dir + "/converted_sft");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(read(dir + "/converted_sft/NOTES.md"), "mine");
  EXPECT_TRUE(fs::exists(dir + "/converted_sft/model.safetensors"));
}

// A model from an FP8 config (blocks of 32 x 32 here) exports FP8 in those blocks, from the run
// and, the same bytes, from its training checkpoint through convert; k_proj [48, 96] is not whole
// blocks and stays BF16, named for transformers.
TEST(TrainCli, Fp8ExportFromTheRunAndFromConvertAgree) {
  const std::string dir = testing::TempDir("trainfp8");
  std::ifstream in(kRoot + "/examples/demo/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string cfg = ss.str();
  const size_t brace = cfg.rfind('}');
  cfg.insert(brace, R"(, "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
    "activation_scheme": "dynamic", "weight_block_size": [32, 32]})");
  std::ofstream(dir + "/config.json") << cfg;
  CliRun r = Xtuner(TinyDemoArgs(dir + "/run", 2) + " --set model.model_config=" + dir +
                    "/config.json --set export.dtype=fp8");
  ASSERT_EQ(r.code, 0) << r.output;
  r = Xtuner("convert --checkpoint " + dir + "/run/checkpoints/step-00000002 --out " + dir +
             "/converted --dtype fp8");
  ASSERT_EQ(r.code, 0) << r.output;
  auto read = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  };
  const std::string a = read(dir + "/run/hf/model.safetensors");
  EXPECT_NE(a.find("\"F8_E4M3\""), std::string::npos);
  EXPECT_TRUE(a == read(dir + "/converted/model.safetensors"));
  for (const std::string& c :
       {read(dir + "/run/hf/config.json"), read(dir + "/converted/config.json")}) {
    EXPECT_NE(c.find("\"weight_block_size\": [\n      32,\n      32\n    ]"), std::string::npos)
        << c;
    EXPECT_NE(c.find("\"model.layers.1.self_attn.k_proj\""), std::string::npos) << c;
  }
}

TEST(TrainCli, ClearErrorsBeforeAnyWork) {
  const std::string dir = testing::TempDir("trainbad");
  CliRun r = Xtuner("train examples/demo.toml --set optim.learning_rate=1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("did you mean 'optim.lr'"), std::string::npos) << r.output;
  r = Xtuner("sft --load-from /no/model --dataset x.jsonl --chat-template chatml --work-dir " +
             dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/no/model"), std::string::npos) << r.output;
  r = Xtuner("train examples/demo.toml --set work_dir=" + dir +
             " --set 'data.datasets=[{path=\"/no/data.jsonl\"}]'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/no/data.jsonl: no such dataset file"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/metrics.jsonl"));
  // A bad eval file fails before the training, not after it.
  std::ofstream(dir + "/eval.jsonl") << "{\"prompt\": \"a\", \"answer\": \"a\"}\n{\"prompt\": 2}\n";
  r = Xtuner(TinyDemoArgs(dir + "/run", 3) + " --set eval.file=" + dir + "/eval.jsonl");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("eval.jsonl:2: expected {\"prompt\": string, \"answer\": string}"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir + "/run/metrics.jsonl"));
}

// Ctrl-C and Slurm's SIGTERM both stop after the step with a checkpoint and exit status 0.
class StopSignal : public ::testing::TestWithParam<int> {};

TEST_P(StopSignal, SavesACheckpointAndExitsCleanly) {
  const std::string dir = testing::TempDir("stopsig");
  const std::string log = dir + "/log.txt";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    if (chdir(kRoot.c_str()) != 0) _exit(99);
    std::string args = TinyDemoArgs(dir + "/run", 100000) + " --set checkpoint.every=0";
    execl("/bin/sh", "sh", "-c", (std::string("exec ") + XT_XTUNER_BIN + " " + args).c_str(),
          (char*)nullptr);
    _exit(98);
  }
  // Wait for the first optimizer step, then interrupt.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream m(dir + "/run/metrics.jsonl");
    std::string line;
    if (std::getline(m, line) && !line.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, GetParam());
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream in(log);
  std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
  EXPECT_NE(output.find("interrupted at step"), std::string::npos) << output;
  bool saved = false;
  for (const auto& e : fs::directory_iterator(dir + "/run/checkpoints"))
    saved |= fs::exists(e.path() / "trainer_state.json");
  EXPECT_TRUE(saved);
}

INSTANTIATE_TEST_SUITE_P(TrainCli, StopSignal, ::testing::Values(SIGINT, SIGTERM));

}  // namespace
}  // namespace xt
