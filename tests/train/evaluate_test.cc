// The end-of-run eval: each answer is scored as Generate answers its prompt alone, and a bad eval
// file is an error that names its line.
#include "xtuner/train/evaluate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "util/testing.h"
#include "xtuner/data/chat_prompt.h"
#include "xtuner/model/generate.h"
#include "xtuner/model/init.h"

namespace xt {
namespace {

const std::string kDemo = testing::DataPath("../../examples/demo");

struct Demo {
  std::unique_ptr<Transformer> model;
  Tokenizer tokenizer;
  ChatTemplate chat;
};

// The demo's tokenizer and a random model of its shape.
Demo MakeDemo() {
  Result<ModelConfig> cfg = ModelConfig::Load(kDemo + "/config.json");
  EXPECT_TRUE(cfg.ok());
  auto model = std::make_unique<Transformer>(*cfg);
  InitRandom(model.get(), 0.5, 3);  // (large weights: answers of a few different tokens)
  return {std::move(model), *Tokenizer::FromFile(kDemo + "/tokenizer.json"),
          *ChatTemplate::ByName("chatml")};
}

// What `log` received.
struct Log {
  char* text = nullptr;
  size_t size = 0;
  std::FILE* f = open_memstream(&text, &size);
  std::string str() {
    std::fflush(f);
    return std::string(text, size);
  }
  ~Log() {
    std::fclose(f);
    std::free(text);
  }
};

TEST(Evaluate, ScoresEachAnswerAsGenerateGivesItAlone) {
  Demo d = MakeDemo();
  std::unique_ptr<Comm> one = MakeSingleComm();
  const std::vector<std::string> prompts = {"reverse: a b",        "reverse: k y d i", "reverse: q",
                                            "sort: c a b",         "reverse: x x y",   "hello",
                                            "reverse: m n o p q r"};
  GenerateOptions go;
  go.max_new_tokens = 5;
  for (const std::string& stop : StopTokens("chatml"))
    if (auto id = d.tokenizer.TokenToId(stop)) go.stop_ids.push_back(*id);
  const std::string path = testing::TempDir("evaluate") + "/eval.jsonl";
  std::ofstream out(path);
  int64_t right = 0;
  std::vector<std::string> texts;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Conversation c;
    Message user;
    user.role = "user";
    user.content = prompts[i];
    c.messages.push_back(user);
    Result<std::vector<int32_t>> ids = EncodeGenerationPrompt(d.chat, d.tokenizer, c);
    ASSERT_TRUE(ids.ok());
    std::vector<int32_t> answer = *Generate(*d.model, *ids, go);
    if (!answer.empty() && std::count(go.stop_ids.begin(), go.stop_ids.end(), answer.back()))
      answer.pop_back();
    texts.push_back(*DecodeAnswer(d.chat, d.tokenizer, answer));
    const bool keep = i % 3 != 1;  // answers 1 and 4 are wrong; the others right, padded
    right += keep;
    out << nlohmann::json{{"prompt", prompts[i]}, {"answer", keep ? " " + texts[i] + "\n" : "~"}}
               .dump()
        << "\n";
    if (i == 2) out << "  \n";  // blank lines are skipped
  }
  out.close();
  EXPECT_NE(texts[0], texts[1]);  // (the answers differ: a wrong one is not right by chance)
  Log log;
  Result<EvalSet> set = ReadEvalSet(path, d.tokenizer, d.chat, 5, d.model->config().vocab_size);
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(set->options.stop_ids, go.stop_ids);
  Result<EvalReport> report = Evaluate(*d.model, *one, *set, d.tokenizer, d.chat, log.f);
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->total, int64_t(prompts.size()));
  EXPECT_EQ(report->correct, right);
  const std::string text = log.str();
  EXPECT_NE(text.find("eval: " + std::to_string(right) + " / 7 right"), std::string::npos) << text;
  EXPECT_NE(text.find("  eval: reverse: k y d i -> "), std::string::npos) << text;
  EXPECT_NE(text.find("(expected ~)"), std::string::npos) << text;
  EXPECT_EQ(text.find("reverse: m n o p q r ->"), std::string::npos) << text;  // five examples
}

TEST(Evaluate, BadFilesAreErrorsNamingTheLine) {
  Demo d = MakeDemo();
  const std::string dir = testing::TempDir("evaluate_bad");
  int64_t vocab = d.model->config().vocab_size;
  auto error = [&](const std::string& name, const std::string& content, int64_t max_new = 4) {
    if (!content.empty()) std::ofstream(dir + "/" + name) << content;
    Result<EvalSet> r = ReadEvalSet(dir + "/" + name, d.tokenizer, d.chat, max_new, vocab);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_NE(error("none.jsonl", "").find("none.jsonl: cannot open the eval file"),
            std::string::npos);
  const std::string good = R"({"prompt": "reverse: a", "answer": "a"})";
  EXPECT_NE(error("a.jsonl", good + "\n{\"prompt\": \n").find("a.jsonl:2: "), std::string::npos);
  EXPECT_NE(error("b.jsonl", good + "\n\n" + R"({"prompt": "x"})" + "\n")
                .find("b.jsonl:3: expected {\"prompt\": string, \"answer\": string}"),
            std::string::npos);
  EXPECT_NE(error("c.jsonl", R"({"prompt": 1, "answer": "a"})").find("c.jsonl:1: expected"),
            std::string::npos);
  EXPECT_EQ(error("d.jsonl", good), "ok");
  EXPECT_NE(error("d.jsonl", good, -1).find("eval.max_new_tokens must be >= 0"), std::string::npos);
  vocab = 40;  // a model smaller than the tokenizer
  EXPECT_NE(error("d.jsonl", good).find("d.jsonl:1: the prompt has token "), std::string::npos);
  EXPECT_NE(error("d.jsonl", good).find("outside the model's vocabulary of 40"), std::string::npos);
}

// The prompts decoded together: as many as kEvalBatch, fewer where their KV caches would not
// fit kEvalCacheBytes, and at least one.
TEST(Evaluate, BatchFollowsTheKvCacheSize) {
  ModelConfig cfg = *ModelConfig::Load(kDemo + "/config.json");
  EvalSet set;
  set.items.resize(3);
  set.items[1].ids.assign(100, 1);  // the longest prompt
  set.options.max_new_tokens = 28;
  EXPECT_EQ(EvalBatchSize(cfg, set), kEvalBatch);  // 2 layers of 2 x 24: 96 KiB a prompt
  cfg.num_layers = 8;  // 8 layers of DeepSeek-V3's caches (its MLA keeps 128 heads of 192)
  cfg.num_kv_heads = 128;
  cfg.head_dim = 192;
  const double per_prompt = 8.0 * 128 * 8 * 128 * 192;  // 201 MB
  EXPECT_EQ(EvalBatchSize(cfg, set), int64_t(kEvalCacheBytes / per_prompt));
  EXPECT_EQ(EvalBatchSize(cfg, set), 10);
  set.options.max_new_tokens = 4000;
  EXPECT_EQ(EvalBatchSize(cfg, set), 1);
}

}  // namespace
}  // namespace xt
