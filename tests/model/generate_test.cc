// Generation with a KV cache equals running the whole sequence each time.
#include "xtuner/model/generate.h"

#include <gtest/gtest.h>

#include <fstream>

#include "util/testing.h"
#include "xtuner/model/checkpoint.h"

namespace xt {
namespace {

TEST(Generate, CachedLogitsEqualFullForwardAtEveryPosition) {
  // (GPT-OSS: 10 tokens through sliding windows of 5 and 3 keys, and attention sinks.)
  for (const char* fixture :
       {"qwen3_moe_tiny", "mixtral_tiny", "qwen3_dense_tiny", "deepseek_v3_tiny",
        "variants/gpt_oss_tiny", "variants/gpt_oss_bf16"}) {
    auto model = LoadHfModel(testing::DataPath(fixture));
    ASSERT_TRUE(model.ok());
    Transformer& m = **model;
    std::vector<int32_t> seq = {5, 17, 300, 2, 99, 42, 7, 7, 150, 3};
    for (int32_t& t : seq) t %= int32_t(m.config().vocab_size);
    std::vector<int64_t> ids(seq.begin(), seq.end());
    auto full = m.Forward(*Batch::FromRows(ids, {}, 1, int64_t(ids.size())), true, false);
    ASSERT_TRUE(full.ok());
    const int64_t V = m.config().vocab_size;
    // Prefill 4 tokens, then one at a time.
    KvCache cache = m.NewKvCache(int64_t(seq.size()));
    auto logits = m.ForwardCached({seq.begin(), seq.begin() + 4}, &cache);
    ASSERT_TRUE(logits.ok());
    EXPECT_LT(testing::RelError(logits->data(), full->logits.f32() + 3 * V, V), 1e-5) << fixture;
    for (size_t t = 4; t < seq.size(); ++t) {
      logits = m.ForwardCached({seq[t]}, &cache);
      ASSERT_TRUE(logits.ok());
      EXPECT_LT(testing::RelError(logits->data(), full->logits.f32() + t * V, V), 1e-5)
          << fixture << " position " << t;
    }
    EXPECT_FALSE(m.ForwardCached({1}, &cache).ok());  // full
  }
}

TEST(Generate, EosIdsOfGenerationConfig) {
  const std::string dir = testing::TempDir("gen_config");
  auto ids = GenerationEosIds(dir + "/generation_config.json");  // no file: none
  ASSERT_TRUE(ids.ok());
  EXPECT_TRUE(ids->empty());
  std::ofstream(dir + "/a.json") << R"({"eos_token_id": 200002, "do_sample": true})";
  EXPECT_EQ(*GenerationEosIds(dir + "/a.json"), (std::vector<int64_t>{200002}));
  std::ofstream(dir + "/b.json") << R"({"eos_token_id": [200002, 199999, 200012]})";
  EXPECT_EQ(*GenerationEosIds(dir + "/b.json"), (std::vector<int64_t>{200002, 199999, 200012}));
  std::ofstream(dir + "/c.json") << R"({"eos_token_id": "</s>"})";
  EXPECT_NE(GenerationEosIds(dir + "/c.json").status().message().find("c.json: eos_token_id"),
            std::string::npos);
  std::ofstream(dir + "/d.json") << "{";
  EXPECT_NE(GenerationEosIds(dir + "/d.json").status().message().find("d.json: not valid JSON"),
            std::string::npos);
  std::ofstream(dir + "/e.json") << "[]";
  EXPECT_NE(GenerationEosIds(dir + "/e.json").status().message().find("e.json: not a JSON object"),
            std::string::npos);
}

TEST(Generate, GreedyStopsAndSamplingIsSeeded) {
  auto model = LoadHfModel(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(model.ok());
  GenerateOptions o;
  o.max_new_tokens = 12;
  auto a = Generate(**model, {1, 2, 3}, o);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->size(), 12u);
  // Greedy decoding is what argmax over the full forward gives.
  std::vector<int64_t> seq = {1, 2, 3};
  for (int32_t t : *a) {
    auto f = (*model)->Forward(*Batch::FromRows(seq, {}, 1, int64_t(seq.size())), true, false);
    const int64_t V = (*model)->config().vocab_size;
    const float* last = f->logits.f32() + (seq.size() - 1) * V;
    EXPECT_EQ(t, std::max_element(last, last + V) - last);
    seq.push_back(t);
  }
  o.stop_ids = {(*a)[4]};
  auto b = Generate(**model, {1, 2, 3}, o);
  ASSERT_TRUE(b.ok());
  EXPECT_LE(b->size(), 5u);
  EXPECT_EQ(b->back(), (*a)[4]);
  o.stop_ids.clear();
  o.temperature = 1.0;
  o.top_p = 0.9;
  o.seed = 11;
  auto s1 = Generate(**model, {1, 2, 3}, o), s2 = Generate(**model, {1, 2, 3}, o);
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(*s1, *s2);
  o.seed = 12;
  auto s3 = Generate(**model, {1, 2, 3}, o);
  EXPECT_NE(*s1, *s3);
  EXPECT_FALSE(Generate(**model, {}, o).ok());
  EXPECT_FALSE(Generate(**model, {5000}, o).ok());
  o.top_p = 0;
  EXPECT_FALSE(Generate(**model, {1}, o).ok());
}

}  // namespace
}  // namespace xt
