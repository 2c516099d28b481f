// Tokenizer against HF `tokenizers`: every case of every fixture under tests/data/tokenizers
// (made by HF: tools/tokenizer/make_fixtures.py), plus the errors the loader and Encode report.
#include "xtuner/data/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "util/testing.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> FixtureNames() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(testing::DataPath("tokenizers"))) {
    if (fs::exists(e.path() / "cases.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

class TokenizerFixture : public ::testing::TestWithParam<std::string> {};

// cases.json: [{text, ids, decoded, [ids_special], [decoded_skip]}] where ids is HF's
// encode(text, add_special_tokens=False), ids_special the same with True, decoded is
// decode(ids, skip_special_tokens=False) and decoded_skip the same with True.
TEST_P(TokenizerFixture, MatchesHuggingFace) {
  const std::string dir = testing::DataPath("tokenizers/" + GetParam());
  auto tok = Tokenizer::FromFile(dir);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const auto cases = testing::Json(ReadFile(dir + "/cases.json"));
  ASSERT_GT(cases.size(), 0u);
  int checked = 0;
  for (const auto& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    auto ids = tok->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>());
    auto decoded = tok->Decode(c["ids"].get<std::vector<int32_t>>());
    ASSERT_TRUE(decoded.ok()) << decoded.status().message();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
    if (c.contains("ids_special")) {
      auto with = tok->Encode(text, /*add_special_tokens=*/true);
      ASSERT_TRUE(with.ok());
      EXPECT_EQ(*with, c["ids_special"].get<std::vector<int32_t>>());
    }
    if (c.contains("decoded_skip")) {
      auto skip = tok->Decode(c["ids"].get<std::vector<int32_t>>(), /*skip_special_tokens=*/true);
      ASSERT_TRUE(skip.ok());
      EXPECT_EQ(*skip, c["decoded_skip"].get<std::string>());
    }
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(cases.size()));
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, TokenizerFixture, ::testing::ValuesIn(FixtureNames()),
                         [](const auto& info) { return info.param; });

TEST(Tokenizer, FixturesArePresent) {
  const auto names = FixtureNames();
  EXPECT_NE(std::find(names.begin(), names.end(), "bpe_qwen_style"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "bpe_llama3_style"), names.end());
}

Tokenizer Qwen() {
  auto t = Tokenizer::FromFile(testing::DataPath("tokenizers/bpe_qwen_style/tokenizer.json"));
  XT_CHECK(t.ok(), t.status().message());
  return std::move(t).value();
}

TEST(Tokenizer, VocabularyAndSpecialTokens) {
  Tokenizer t = Qwen();
  EXPECT_EQ(t.vocab_size(), 3003);
  EXPECT_EQ(t.TokenToId("<|im_end|>"), 3002);
  EXPECT_EQ(t.IdToToken(3002), "<|im_end|>");
  EXPECT_TRUE(t.IsSpecial(3002));
  EXPECT_FALSE(t.IsSpecial(100));
  EXPECT_EQ(t.IdToToken(99999), "");
  EXPECT_FALSE(t.TokenToId("no such token").has_value());
  auto s = t.Decode({3001, 100, 3002}, /*skip_special_tokens=*/true);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, t.Decode({100}).value());
}

TEST(Tokenizer, EmptyText) {
  auto ids = Qwen().Encode("");
  ASSERT_TRUE(ids.ok());
  EXPECT_TRUE(ids->empty());
}

TEST(Tokenizer, InvalidUtf8IsAnError) {
  Tokenizer t = Qwen();
  for (std::string bad : {std::string("abc\xff"), std::string("\xc3"), std::string("\xed\xa0\x80"),
                          std::string("\xc0\xaf"), std::string("ok\xf4\x90\x80\x80")}) {
    auto ids = t.Encode(bad);
    ASSERT_FALSE(ids.ok()) << bad;
    EXPECT_NE(ids.status().message().find("not valid UTF-8"), std::string::npos);
  }
}

TEST(Tokenizer, IdsOutsideTheVocabularyAreAnError) {
  auto s = Qwen().Decode({1, 5000});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("id 5000"), std::string::npos) << s.status().message();
  EXPECT_FALSE(Qwen().Decode({-1}).ok());
}

TEST(Tokenizer, ThreadsGetTheSameIds) {
  Tokenizer t = Qwen();
  const std::string text = "Hello, world! 你好 🤗 <|im_start|>user\n12345 don't  stop\n";
  const auto want = t.Encode(text).value();
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) bad += t.Encode(text).value() != want;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad, 0);
}

// ---- Load errors: each names the file and what is wrong ----

std::string Minimal(const std::string& normalizer, const std::string& pre_tokenizer,
                    const std::string& decoder, const std::string& model_extra = "") {
  return R"({"version": "1.0", "added_tokens": [], "normalizer": )" + normalizer +
         R"(, "pre_tokenizer": )" + pre_tokenizer + R"(, "post_processor": null, "decoder": )" +
         decoder + R"(, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, )" +
         R"("merges": ["a b"])" + model_extra + "}}";
}

std::string LoadError(const std::string& json) {
  auto t = Tokenizer::FromJson(json, "tok.json");
  return t.ok() ? std::string("loaded") : t.status().message();
}

TEST(Tokenizer, MinimalLoadsAndMerges) {
  auto t = Tokenizer::FromJson(Minimal("null", "null", "null"), "tok.json");
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->Encode("abab").value(), (std::vector<int32_t>{2, 2}));
  EXPECT_EQ(t->Encode("aba").value(), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(t->Decode({2, 0}).value(), "ab a");  // no decoder: tokens joined by spaces
}

TEST(Tokenizer, UnknownComponentsAreNamed) {
  std::string e = LoadError(Minimal("null", R"({"type": "BertPreTokenizerX"})", "null"));
  EXPECT_NE(e.find("tok.json: pre_tokenizer type \"BertPreTokenizerX\" is not implemented "
                   "(supported: Split, ByteLevel"),
            std::string::npos)
      << e;
  e = LoadError(Minimal(R"({"type": "BertNormalizer"})", "null", "null"));
  EXPECT_NE(e.find("normalizer type \"BertNormalizer\" is not implemented"), std::string::npos)
      << e;
  e = LoadError(Minimal("null", "null", R"({"type": "WordPiece", "prefix": "##"})"));
  EXPECT_NE(e.find("decoder type \"WordPiece\" is not implemented"), std::string::npos) << e;
  e = LoadError(R"({"model": {"type": "Unigram", "vocab": []}})");
  EXPECT_NE(e.find("tok.json: model type \"Unigram\" is not implemented (supported: BPE)"),
            std::string::npos)
      << e;
  e = LoadError(
      R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "post_processor": {"type": "X"}})");
  EXPECT_NE(e.find("post_processor type \"X\" is not implemented"), std::string::npos) << e;
}

TEST(Tokenizer, BadFilesAreNamed) {
  EXPECT_NE(LoadError("{not json").find("tok.json: not valid JSON"), std::string::npos);
  EXPECT_NE(LoadError("{}").find("tok.json: \"model\" is missing"), std::string::npos);
  std::string e =
      LoadError(Minimal("null", "null", "null")
                    .replace(Minimal("null", "null", "null").find("\"a b\""), 5, "\"a c\""));
  EXPECT_NE(e.find("merges[0]: token \"c\" is not in the vocabulary"), std::string::npos) << e;
  e = LoadError(Minimal("null", R"({"type": "Split", "pattern": {"Regex": "(a"},
                                   "behavior": "Isolated", "invert": false})",
                        "null"));
  EXPECT_NE(e.find("pre_tokenizer Split: regex \"(a\" does not compile"), std::string::npos) << e;
  e = LoadError(Minimal("null", "null", "null", R"(, "dropout": 0.1)"));
  EXPECT_NE(e.find("dropout is not implemented"), std::string::npos) << e;
  auto t = Tokenizer::FromFile("/no/such/dir/tokenizer.json");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("/no/such/dir/tokenizer.json: cannot open"),
            std::string::npos);
}

// Found by tokenizer_fuzz: a template naming an id that no token has.
TEST(Tokenizer, PostProcessorIdsMustBeInTheVocabulary) {
  std::string json = Minimal("null", "null", "null");
  const std::string post =
      R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}},
          {"Sequence": {"id": "A"}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [7]}}})";
  json.replace(json.find("\"post_processor\": null"), 22, "\"post_processor\": " + post);
  std::string e = LoadError(json);
  EXPECT_NE(e.find("tok.json: post_processor adds id 7, which is not in the vocabulary"),
            std::string::npos)
      << e;
  json.replace(json.find("[7]"), 3, "[1]");
  auto t = Tokenizer::FromJson(json, "tok.json");
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->Encode("ab", /*add_special_tokens=*/true).value(), (std::vector<int32_t>{1, 2}));
}

TEST(Tokenizer, DeeplyNestedJsonIsAnError) {
  std::string json = R"({"model": )" + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_NE(LoadError(json).find("JSON nested more than 64 levels deep"), std::string::npos);
}

TEST(Tokenizer, MissingUnkTokenIsAnEncodeError) {
  auto t = Tokenizer::FromJson(Minimal("null", "null", "null", R"(, "unk_token": "<unk>")"), "t");
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_TRUE(t->Encode("ab").ok());
  EXPECT_FALSE(t->Encode("abc").ok());
}

}  // namespace
}  // namespace xt
