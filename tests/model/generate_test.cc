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

// Sequences run together (each over its own cache, some prefilling while others decode) give
// each one's logits as it gives them alone.
TEST(Generate, ManySequencesAtOnceGiveEachOnesLogits) {
  for (const char* fixture : {"qwen3_moe_tiny", "mixtral_tiny", "qwen3_dense_tiny",
                              "deepseek_v3_tiny", "variants/gpt_oss_tiny"}) {
    auto model = LoadHfModel(testing::DataPath(fixture));
    ASSERT_TRUE(model.ok());
    Transformer& m = **model;
    const int32_t V = int32_t(m.config().vocab_size);
    std::vector<std::vector<int32_t>> seqs = {
        {5, 17, 300, 2, 99, 42, 7, 7}, {150}, {3, 3, 3, 3, 3, 3, 9, 1}};
    for (auto& s : seqs)
      for (int32_t& t : s) t %= V;
    std::vector<KvCache> alone, together;
    for (int i = 0; i < 3; ++i) {
      alone.push_back(m.NewKvCache(8));
      together.push_back(m.NewKvCache(8));
    }
    // Step 1: prefill 4, 1 and 6 tokens; step 2: one more token of each of the first two (the
    // second's not its own: n = 0), two of the third; step 3: the first alone.
    const std::vector<std::vector<std::pair<int, int>>> steps = {
        {{0, 4}, {1, 1}, {2, 6}}, {{0, 1}, {1, 0}, {2, 2}}, {{0, 0}}};
    std::vector<int> at(3, 0);
    for (const auto& step : steps) {
      std::vector<std::vector<int32_t>> ids;
      std::vector<KvCache*> caches;
      std::vector<int> which;
      for (auto [i, n] : step) {
        std::vector<int32_t> chunk = {int32_t(at[i] + 11) % V};  // n = 0: one not in it
        if (n > 0) chunk.assign(seqs[i].begin() + at[i], seqs[i].begin() + at[i] + n);
        ids.push_back(chunk);
        caches.push_back(&together[i]);
        which.push_back(i);
      }
      auto got = m.ForwardCachedMany(ids, caches);
      ASSERT_TRUE(got.ok()) << got.status().message();
      ASSERT_EQ(got->size(), ids.size());
      for (size_t s = 0; s < ids.size(); ++s) {
        const int i = which[s];
        auto want = m.ForwardCached(ids[s], &alone[i]);
        ASSERT_TRUE(want.ok());
        EXPECT_LT(testing::RelError((*got)[s].data(), want->data(), V), 1e-5)
            << fixture << " sequence " << i;
        EXPECT_EQ(together[i].length, alone[i].length);
        at[i] += int(ids[s].size());
      }
    }
  }
}

TEST(Generate, ManySequencesErrorsNameTheSequence) {
  auto model = LoadHfModel(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(model.ok());
  Transformer& m = **model;
  KvCache a = m.NewKvCache(4), b = m.NewKvCache(2);
  auto message = [&](const std::vector<std::vector<int32_t>>& ids, std::vector<KvCache*> caches) {
    auto r = m.ForwardCachedMany(ids, caches);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_NE(message({{1}, {2}}, {&a}).find("2 sequences and 1 caches"), std::string::npos);
  EXPECT_NE(message({}, {}).find("at least one"), std::string::npos);
  EXPECT_NE(message({{1}, {}}, {&a, &b}).find("sequence 1: no tokens"), std::string::npos);
  EXPECT_NE(
      message({{1}, {1, 2, 3}}, {&a, &b}).find("sequence 1: 3 positions exceed the KV cache of 2"),
      std::string::npos);
  EXPECT_NE(message({{1}, {1 << 30}}, {&a, &b}).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(message({{1}, {2}}, {&a, nullptr}).find("sequence 1: no KV cache"), std::string::npos);
  EXPECT_NE(message({{1}, {2}}, {&a, &a}).find("sequence 1: its KV cache is an earlier"),
            std::string::npos);
  EXPECT_EQ(a.length, 0);  // nothing ran
  EXPECT_EQ(b.length, 0);
}

// GenerateMany on one rank: each prompt's output is Generate's, greedy (with a stop token that
// ends some early) and sampled, in batches smaller than, equal to and larger than the prompts.
TEST(Generate, GenerateManyGivesEachPromptsOutput) {
  auto model = LoadHfModel(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(model.ok());
  std::unique_ptr<Comm> one = MakeSingleComm();
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 2, 3}, {7}, {40, 41, 42, 43, 44, 45}, {9, 9}, {100, 3}, {5, 6, 7, 8}, {11}};
  GenerateOptions o;
  o.max_new_tokens = 6;
  auto first = Generate(**model, prompts[0], o);
  ASSERT_TRUE(first.ok());
  o.stop_ids = {(*first)[2]};
  for (double temperature : {0.0, 1.0}) {
    o.temperature = temperature;
    o.seed = 5;
    std::vector<std::vector<int32_t>> want;
    for (const auto& p : prompts) want.push_back(*Generate(**model, p, o));
    for (int64_t batch : {1, 3, 7, 16}) {
      auto got = GenerateMany(**model, *one, prompts, o, batch);
      ASSERT_TRUE(got.ok()) << got.status().message();
      EXPECT_EQ(*got, want) << "temperature " << temperature << ", batch " << batch;
    }
  }
  o.temperature = 0;
  EXPECT_EQ(GenerateMany(**model, *one, prompts, o)->at(0).size(), 3u);  // the stop token
  o.max_new_tokens = 0;
  EXPECT_EQ(*GenerateMany(**model, *one, prompts, o),
            std::vector<std::vector<int32_t>>(prompts.size()));
  EXPECT_TRUE(GenerateMany(**model, *one, {}, o)->empty());
  auto error = [&](const std::vector<std::vector<int32_t>>& p, int64_t batch) {
    auto r = GenerateMany(**model, *one, p, o, batch);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_NE(error({{1}, {}}, 4).find("prompt 1: empty"), std::string::npos);
  EXPECT_NE(error({{1}, {2, 5000}}, 4).find("prompt 1: token id 5000"), std::string::npos);
  EXPECT_NE(error({{1}}, 0).find("batch must be >= 1"), std::string::npos);
  o.max_new_tokens = -1;
  EXPECT_NE(error({{1}}, 4).find("max_new_tokens"), std::string::npos);
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
