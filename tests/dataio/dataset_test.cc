// Datasets: JSONL parsing (chat and text), every kind of bad line with its PATH:LINE: message
// or its skip count, Unicode-heavy corpora, and mixing by ratio.
#include "xtuner/data/dataset.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "util/testing.h"

namespace xt {
namespace {

using nlohmann::ordered_json;

const Tokenizer& Tok(const std::string& name = "chat_qwen3") {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    auto t = Tokenizer::FromFile(testing::DataPath("tokenizers/" + name + "/tokenizer.json"));
    if (!t.ok()) {
      ADD_FAILURE() << t.status().message();
      std::abort();
    }
    it = cache.emplace(name, std::move(t).value()).first;
  }
  return it->second;
}

ChatTemplate Qwen3() { return ChatTemplate::ByName("qwen3").value(); }

std::string Corpus(const std::string& name) { return testing::DataPath("corpus/" + name); }

// A file in a fresh directory with these exact bytes.
std::string WriteFile(const std::string& bytes, const std::string& name = "data.jsonl") {
  std::string path = testing::TempDir("dataset") + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

Result<std::vector<Sample>> Load(const std::string& path, OnBadSample on_bad = OnBadSample::kError,
                                 DatasetKind kind = DatasetKind::kAuto,
                                 LoadReport* report = nullptr, const std::string& tmpl = "qwen3") {
  LoadOptions options;
  options.on_bad_sample = on_bad;
  return LoadJsonl({path, 1.0, kind}, Tok(), ChatTemplate::ByName(tmpl).value(), options, report);
}

std::string LoadError(const std::string& path, DatasetKind kind = DatasetKind::kAuto,
                      const std::string& tmpl = "qwen3") {
  auto r = Load(path, OnBadSample::kError, kind, nullptr, tmpl);
  EXPECT_FALSE(r.ok());
  return r.ok() ? "" : r.status().message();
}

const char* kGood =
    R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})";

// ---- Parsing one sample ----

TEST(DatasetTest, ParsesOpenAiMessages) {
  auto j = testing::OrderedJson(R"({
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"z": 1, "a": 2}}}],
    "messages": [
      {"role": "system", "content": "S"},
      {"role": "user", "content": [{"type": "text", "text": "part one, "},
                                   {"type": "text", "text": "part two"}]},
      {"role": "assistant", "content": null, "reasoning_content": "why",
       "tool_calls": [{"id": "c1", "type": "function",
                       "function": {"name": "f", "arguments": {"y": [1, 2.5], "x": "é"}}},
                      {"type": "function", "function": {"name": "g", "arguments": "{\"k\":1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "r"},
      {"role": "assistant", "content": "done", "thinking": "ok", "weight": 1}]})");
  Conversation c;
  SampleError e;
  ASSERT_TRUE(ParseChatSample(j, &c, &e)) << e.message;
  ASSERT_EQ(c.messages.size(), 5u);
  EXPECT_EQ(c.messages[1].content, "part one, part two");
  EXPECT_EQ(c.messages[2].content, "");
  EXPECT_EQ(c.messages[2].thinking, "why");
  ASSERT_EQ(c.messages[2].tool_calls.size(), 2u);
  EXPECT_EQ(c.messages[2].tool_calls[0].name, "f");
  // An object is written as transformers' tojson writes it: key order kept, ", " and ": ".
  EXPECT_EQ(c.messages[2].tool_calls[0].arguments_json, "{\"y\": [1, 2.5], \"x\": \"é\"}");
  EXPECT_EQ(c.messages[2].tool_calls[1].arguments_json, "{\"k\":1}");  // a string: as given
  EXPECT_EQ(c.messages[3].name, "f");
  EXPECT_EQ(c.messages[4].thinking, "ok");
  EXPECT_EQ(
      c.tools_json,
      "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"z\":1,\"a\":2}}}]");
}

struct BadCase {
  const char* json;
  BadSample reason;
  const char* message;
};

TEST(DatasetTest, ChatSampleErrors) {
  const BadCase cases[] = {
      {R"({"msgs": []})", BadSample::kMissingField, "no \"messages\""},
      {R"({"messages": {}})", BadSample::kWrongType,
       "\"messages\" must be an array, got an object"},
      {R"({"messages": []})", BadSample::kNoAssistant, "\"messages\" is empty"},
      {R"({"messages": [{"role": "user", "content": "u"}]})", BadSample::kNoAssistant,
       "no assistant message to train on"},
      {R"({"messages": ["hi"]})", BadSample::kWrongType,
       "messages[0] must be an object, got a string"},
      {R"({"messages": [{"content": "x"}]})", BadSample::kMissingField,
       "messages[0] has no \"role\""},
      {R"({"messages": [{"role": 1}]})", BadSample::kWrongType,
       "messages[0].role must be a string, got a number"},
      {R"({"messages": [{"role": "function", "content": "x"}]})", BadSample::kUnknownRole,
       "messages[0].role \"function\" is not one of \"system\", \"developer\", \"user\", "
       "\"assistant\", \"tool\""},
      {R"({"messages": [{"role": "user", "content": 42}]})", BadSample::kWrongType,
       "messages[0].content must be a string, null or a list of text parts, got a number"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]})",
       BadSample::kWrongType,
       "messages[0].content[0] must be a text part {\"type\": \"text\", \"text\": \"...\"}, got "
       "{\"type\":\"image_url\",\"image_url\":\"u\"}"},
      {R"({"messages": [{"role": "user", "content": "u", "thinking": "t"}]})",
       BadSample::kWrongType, "messages[0].thinking: only assistant messages think"},
      {R"({"messages": [{"role": "assistant", "content": "a", "thinking": 3}]})",
       BadSample::kWrongType, "messages[0].thinking must be a string, got a number"},
      {R"({"messages": [{"role": "assistant", "content": "a", "thinking": "x", "reasoning_content": "y"}]})",
       BadSample::kWrongType,
       "messages[0] has both \"thinking\" and \"reasoning_content\", and they differ"},
      {R"({"messages": [{"role": "assistant", "tool_calls": {}}]})", BadSample::kWrongType,
       "messages[0].tool_calls must be an array, got an object"},
      {R"({"messages": [{"role": "user", "tool_calls": [{}]}]})", BadSample::kWrongType,
       "messages[0].tool_calls: only assistant messages call tools"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "code"}]}]})",
       BadSample::kWrongType, "messages[0].tool_calls[0].type must be \"function\""},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]})",
       BadSample::kWrongType, "messages[0].tool_calls[0] has no \"function\""},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]})",
       BadSample::kWrongType, "messages[0].tool_calls[0].function.name must be a non-empty string"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}]})",
       BadSample::kWrongType,
       "messages[0].tool_calls[0].function.arguments is a string that is not valid JSON: parse "
       "error at line 1, column 2: syntax error while parsing object key - invalid literal; last "
       "read: '{x'; expected string literal"},
      {R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 5}}]}]})",
       BadSample::kWrongType,
       "messages[0].tool_calls[0].function.arguments must be a JSON string or an object, got a "
       "number"},
      {R"({"messages": [{"role": "assistant", "content": "a"}], "tools": {}})",
       BadSample::kWrongType, "\"tools\" must be an array, got an object"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.json);
    Conversation conv;
    SampleError e;
    EXPECT_FALSE(ParseChatSample(testing::OrderedJson(c.json), &conv, &e));
    EXPECT_EQ(e.reason, c.reason) << BadSampleName(e.reason);
    EXPECT_EQ(e.message, c.message);
  }
}

TEST(DatasetTest, TextSamples) {
  std::string text;
  SampleError e;
  EXPECT_TRUE(ParseTextSample(testing::OrderedJson(R"({"text": "a", "content": "b"})"), &text, &e));
  EXPECT_EQ(text, "a");
  EXPECT_TRUE(ParseTextSample(testing::OrderedJson(R"({"content": "b"})"), &text, &e));
  EXPECT_EQ(text, "b");
  EXPECT_FALSE(ParseTextSample(testing::OrderedJson(R"({"text": ""})"), &text, &e));
  EXPECT_EQ(e.reason, BadSample::kEmptyText);
  EXPECT_FALSE(ParseTextSample(testing::OrderedJson(R"({"text": ["a"]})"), &text, &e));
  EXPECT_EQ(e.message, "\"text\" must be a string, got an array");
  EXPECT_FALSE(ParseTextSample(testing::OrderedJson(R"({"body": "a"})"), &text, &e));
  EXPECT_EQ(e.reason, BadSample::kMissingField);
}

// ---- Bad lines in files: PATH:LINE: messages ----

TEST(DatasetTest, EachBadLineIsNamedByPathAndLine) {
  const std::pair<std::string, std::string> cases[] = {
      {"{\"messages\": [",
       "not valid JSON: parse error at line 1, column 15: syntax error while "
       "parsing value - unexpected end of input; expected '[', '{', or a "
       "literal"},
      {"{\"text\": \"caf\xe9\"}", "invalid UTF-8 at byte 14"},
      {"", "empty line"},
      {"   ", "empty line"},
      {"{}", "empty object"},
      {"[1, 2]", "expected a JSON object, got an array"},
      {"\"just a string\"", "expected a JSON object, got a string"},
      {"{\"conversation\": []}", "no \"messages\""},
      {R"({"messages": [{"role": "user", "content": 42}]})",
       "messages[0].content must be a string, null or a list of text parts, got a number"},
      {R"({"messages": [{"role": "bot", "content": "x"}]})",
       "messages[0].role \"bot\" is not one of \"system\", \"developer\", \"user\", \"assistant\", "
       "\"tool\""},
      {R"({"messages": [{"role": "user", "content": "x"}]})", "no assistant message to train on"},
      {R"({"text": "a document"})", "a text sample (\"text\" or \"content\") in a chat dataset"},
      // Nesting the templates could not walk: in the line (101 levels with its object), or in a
      // tool call's arguments string (101).
      {"{\"tools\": " + std::string(100, '[') + std::string(100, ']') + "}",
       "JSON nested more than 100 levels deep"},
      {R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", )"
       R"("tool_calls": [{"function": {"name": "f", "arguments": ")" +
           std::string(101, '[') + std::string(101, ']') + R"("}}]}]})",
       "messages[1].tool_calls[0].function.arguments is a string that is JSON nested more than "
       "100 levels deep"},
  };
  for (const auto& [line, message] : cases) {
    SCOPED_TRACE(line);
    // The good first line makes it a chat dataset; the bad one is line 2.
    // (Joined by append: g++ 12 -O1 warns falsely on a chain of std::string +, PR 105651.)
    std::string text;
    for (std::string_view part :
         {std::string_view(kGood), std::string_view(line), std::string_view(kGood)}) {
      text.append(part).append("\n");
    }
    std::string path = WriteFile(text);
    EXPECT_EQ(LoadError(path), path + ":2: " + message);
  }
}

TEST(DatasetTest, TextDatasetErrors) {
  const std::string path = Corpus("malformed_text.jsonl");
  EXPECT_EQ(LoadError(path), path + ":2: \"text\" is empty");
  std::string p2 = WriteFile("{\"text\": \"ok\"}\n" + std::string(kGood) + "\n");
  EXPECT_EQ(LoadError(p2), p2 + ":2: a chat sample (\"messages\") in a text dataset");
  // kind chat refuses a text line, kind text a chat line, from the first line on.
  EXPECT_EQ(LoadError(p2, DatasetKind::kChat),
            p2 + ":1: a text sample (\"text\" or \"content\") in a chat dataset");
  // With kind auto, a first line of neither kind decides nothing.
  std::string p4 = WriteFile("{\"conversation\": []}\n");
  EXPECT_EQ(LoadError(p4), p4 + ":1: no \"messages\", \"text\" or \"content\"");
  std::string p3 = WriteFile(std::string(kGood) + "\n");
  EXPECT_EQ(LoadError(p3, DatasetKind::kText),
            p3 + ":1: a chat sample (\"messages\") in a text dataset");
}

TEST(DatasetTest, RenderErrorsAreBadSamples) {
  // ChatML has no place for thinking: that sample cannot be rendered.
  std::string path = WriteFile(
      std::string(kGood) + "\n" +
      R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "thinking": "t"}]})" +
      "\n");
  EXPECT_EQ(LoadError(path, DatasetKind::kAuto, "chatml"),
            path +
                ":2: chatml chat template: message 1 (assistant): ChatML has no place for "
                "thinking (use qwen3)");
  LoadReport report;
  auto r = Load(path, OnBadSample::kSkip, DatasetKind::kAuto, &report, "chatml");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 1u);
  EXPECT_EQ(report.reasons[size_t(BadSample::kRender)].count, 1);
}

TEST(DatasetTest, IoErrors) {
  auto r = Load("/nonexistent/data.jsonl");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "/nonexistent/data.jsonl: cannot open: No such file or directory");
  // A tokenizer without the template's tokens is not the line's fault: never skipped.
  LoadOptions skip;
  skip.on_bad_sample = OnBadSample::kSkip;
  r = LoadJsonl({Corpus("chat.jsonl")}, Tok("bpe_qwen_style"),
                ChatTemplate::ByName("llama3").value(), skip, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            Corpus("chat.jsonl") + ":1: tokenizer " + Tok("bpe_qwen_style").source() +
                " has no token \"<|begin_of_text|>\", which the llama3 chat template needs");
  // Text datasets need an EOS token.
  skip.eos_token = "<|nope|>";
  r = LoadJsonl({Corpus("text.jsonl")}, Tok(), Qwen3(), skip, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), Corpus("text.jsonl") + ":1: tokenizer " + Tok().source() +
                                      " has no EOS token \"<|nope|>\"");
}

// ---- The malformed corpora, skipped and counted ----

TEST(DatasetTest, MalformedCorpusFailsAtItsFirstBadLine) {
  const std::string path = Corpus("malformed.jsonl");
  EXPECT_EQ(LoadError(path),
            path +
                ":2: not valid JSON: parse error at line 1, column 48: syntax error while "
                "parsing array - unexpected end of input; expected ']'");
}

TEST(DatasetTest, MalformedCorpusSkipsAndCountsEveryKind) {
  const std::string path = Corpus("malformed.jsonl");
  LoadReport report;
  auto samples = Load(path, OnBadSample::kSkip, DatasetKind::kAuto, &report);
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  EXPECT_EQ(samples->size(), 3u);
  EXPECT_EQ(report.lines, 14);
  EXPECT_EQ(report.samples, 3);
  EXPECT_EQ(report.skipped, 11);
  auto reason = [&](BadSample r) { return report.reasons[size_t(r)]; };
  EXPECT_EQ(reason(BadSample::kNotJson).first_lines, std::vector<int64_t>{2});
  EXPECT_EQ(reason(BadSample::kInvalidUtf8).first_lines, std::vector<int64_t>{3});
  EXPECT_EQ(reason(BadSample::kInvalidUtf8).first_message, "invalid UTF-8 at byte 47");
  EXPECT_EQ(reason(BadSample::kEmptyLine).first_lines, (std::vector<int64_t>{4, 13}));
  EXPECT_EQ(reason(BadSample::kEmptyObject).first_lines, std::vector<int64_t>{5});
  EXPECT_EQ(reason(BadSample::kNotObject).first_lines, std::vector<int64_t>{6});
  EXPECT_EQ(reason(BadSample::kMissingField).first_lines, std::vector<int64_t>{7});
  EXPECT_EQ(reason(BadSample::kWrongType).first_lines, (std::vector<int64_t>{8, 12}));
  EXPECT_EQ(reason(BadSample::kWrongType).count, 2);
  EXPECT_EQ(reason(BadSample::kUnknownRole).first_lines, std::vector<int64_t>{9});
  EXPECT_EQ(reason(BadSample::kNoAssistant).first_lines, std::vector<int64_t>{10});
  EXPECT_EQ(report.Summary(),
            path +
                ": 14 lines, 3 samples, 11 skipped: 1 not JSON (line 2), 1 invalid UTF-8 "
                "(line 3), 2 empty line (lines 4, 13), 1 empty object (line 5), 1 not an "
                "object (line 6), 1 missing field (line 7), 2 wrong type (lines 8, 12), 1 "
                "unknown role (line 9), 1 no assistant turn (line 10)");
}

TEST(DatasetTest, MalformedTextCorpusSkipsAndCounts) {
  const std::string path = Corpus("malformed_text.jsonl");
  LoadReport report;
  auto samples = Load(path, OnBadSample::kSkip, DatasetKind::kAuto, &report);
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  EXPECT_EQ(samples->size(), 3u);
  EXPECT_EQ(report.Summary(),
            path +
                ": 8 lines, 3 samples, 5 skipped: 1 not JSON (line 6), 2 missing field "
                "(lines 4, 7), 1 wrong type (line 3), 1 empty text (line 2)");
}

TEST(DatasetTest, SummaryElidesLinesPastTheFirstFew) {
  std::string bytes = std::string(kGood) + "\n";
  for (int i = 0; i < 7; ++i) bytes += "{}\n";
  std::string path = WriteFile(bytes);
  LoadReport report;
  ASSERT_TRUE(Load(path, OnBadSample::kSkip, DatasetKind::kAuto, &report).ok());
  EXPECT_EQ(report.Summary(),
            path + ": 8 lines, 1 samples, 7 skipped: 7 empty object (lines 2, 3, 4, 5, 6, ...)");
}

// ---- Tokenized samples ----

TEST(DatasetTest, ChatSamplesAreEncodedByTheTemplate) {
  auto samples = Load(Corpus("chat.jsonl"));
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  ASSERT_EQ(samples->size(), 6u);
  Conversation c;
  SampleError e;
  // Line 3 has two assistant turns; train_last_turn_only trains fewer tokens there.
  LoadOptions last;
  last.train_last_turn_only = true;
  auto last_only = LoadJsonl({Corpus("chat.jsonl")}, Tok(), Qwen3(), last, nullptr);
  ASSERT_TRUE(last_only.ok());
  auto trained = [](const Sample& s) {
    return std::count_if(s.labels.begin(), s.labels.end(), [](int32_t l) { return l != -100; });
  };
  EXPECT_EQ((*samples)[2].input_ids, (*last_only)[2].input_ids);
  EXPECT_GT(trained((*samples)[2]), trained((*last_only)[2]));
  EXPECT_EQ(trained((*samples)[0]), trained((*last_only)[0]));
  // Each sample equals encoding its conversation directly.
  std::ifstream in(Corpus("chat.jsonl"));
  std::string line;
  for (size_t i = 0; std::getline(in, line); ++i) {
    ASSERT_TRUE(ParseChatSample(testing::OrderedJson(line), &c, &e));
    auto direct = Qwen3().Encode(c, Tok(), false);
    ASSERT_TRUE(direct.ok());
    EXPECT_EQ((*samples)[i].input_ids, direct->input_ids);
    EXPECT_EQ((*samples)[i].labels, direct->labels);
  }
}

TEST(DatasetTest, TextSamplesGetEosAndTrainEverywhere) {
  auto samples = Load(Corpus("text.jsonl"));
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  ASSERT_EQ(samples->size(), 5u);
  const int32_t eos = *Tok().TokenToId("<|endoftext|>");  // DefaultEosToken
  for (const auto& s : *samples) {
    EXPECT_EQ(s.input_ids.back(), eos);
    EXPECT_EQ(s.labels, s.input_ids);
  }
  EXPECT_EQ(Tok().Decode((*samples)[3].input_ids).value(), "Document number 3.<|endoftext|>");
  // A configured EOS token.
  LoadOptions options;
  options.eos_token = "<|im_end|>";
  auto r = LoadJsonl({Corpus("text.jsonl")}, Tok(), Qwen3(), options, nullptr);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].input_ids.back(), *Tok().TokenToId("<|im_end|>"));
  EXPECT_EQ(DefaultEosToken(Tok("chat_llama3")).value(), "<|end_of_text|>");
  EXPECT_EQ(
      EosTokenFromConfig(testing::DataPath("tokenizers/chat_llama3/tokenizer_config.json")).value(),
      "<|eot_id|>");
}

// ---- Unicode ----

TEST(DatasetTest, UnicodeCorpusSurvivesByteForByte) {
  std::ifstream in(Corpus("unicode.jsonl"), std::ios::binary);
  std::vector<Conversation> convs;
  std::string line;
  while (std::getline(in, line)) {
    Conversation c;
    SampleError e;
    ASSERT_TRUE(ParseChatSample(testing::OrderedJson(line), &c, &e)) << e.message;
    convs.push_back(c);
  }
  ASSERT_EQ(convs.size(), 5u);
  EXPECT_EQ(convs[0].messages[0].content, "中文：你好，世界！今天天气怎么样？");
  EXPECT_EQ(
      convs[1].messages[0].content,
      "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 🏳️‍🌈");  // from
                                                                                  // \ud83d\ude00
                                                                                  // escapes
  EXPECT_EQ(convs[1].messages[1].content, "Surrogate escapes decode too: 😀");
  EXPECT_EQ(convs[2].messages[0].content,
            "Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0320\u0334 \u1100\u1161\u11a8");
  EXPECT_EQ(convs[3].messages[0].content, "RTL: שלום עולם \u200f مرحبا بالعالم \u202eevil\u202c");
  EXPECT_EQ(convs[4].messages[0].content,
            std::string("Controls: tab\there, bell\a, esc\x1b[0m, nul") + '\0' +
                "end, del\x7f, nel\u0085, ls\u2028ps\u2029, bom\ufeff");

  // Tokenized: every sample decodes back to its render (NFC-normalised, as the tokenizer does).
  auto samples = Load(Corpus("unicode.jsonl"));
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  ASSERT_EQ(samples->size(), 5u);
  for (size_t i = 0; i < convs.size(); ++i) {
    auto segs = Qwen3().Render(convs[i], false).value();
    std::string text;
    for (const auto& s : segs) text += s.text;
    EXPECT_EQ((*samples)[i].input_ids, Tok().Encode(text).value());
  }
  std::string decoded = Tok().Decode((*samples)[1].input_ids).value();
  EXPECT_NE(decoded.find("👨‍👩‍👧‍👦"), std::string::npos);
  EXPECT_NE(Tok().Decode((*samples)[4].input_ids).value().find("ls\u2028ps\u2029"),
            std::string::npos);
}

TEST(DatasetTest, UnicodeTextCorpusWithCrlfLines) {
  LoadReport report;
  auto samples =
      Load(Corpus("unicode_text.jsonl"), OnBadSample::kError, DatasetKind::kText, &report);
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  ASSERT_EQ(samples->size(), 2u);
  EXPECT_EQ(Tok().Decode((*samples)[0].input_ids).value(), "漢字とかな混じり文。<|endoftext|>");
  EXPECT_EQ(Tok().Decode((*samples)[1].input_ids).value(),
            std::string("🙂 \u00e9 שלום ") + '\0' + " \u2028 end<|endoftext|>");  // NFC: é
}

// ---- Mixing ----

TEST(DatasetTest, PlanMixtureTakesRatiosOfEachDataset) {
  auto plan = PlanMixture({10, 4, 6, 5}, {0.5, 2.0, 1.5, 0.0}, 7);
  ASSERT_TRUE(plan.ok());
  std::map<int, std::multiset<int64_t>> taken;
  for (const auto& e : *plan) taken[e.dataset].insert(e.index);
  EXPECT_EQ(taken[0].size(), 5u);  // half of 10, all distinct
  EXPECT_EQ(std::set<int64_t>(taken[0].begin(), taken[0].end()).size(), 5u);
  EXPECT_EQ(taken[1].size(), 8u);  // every sample twice
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(taken[1].count(i), 2u);
  EXPECT_EQ(taken[2].size(), 9u);  // all 6 once, and 3 of them once more
  for (int64_t i = 0; i < 6; ++i) EXPECT_GE(taken[2].count(i), 1u);
  EXPECT_EQ(taken.count(3), 0u);  // ratio 0: none
  EXPECT_EQ(plan->size(), 22u);
}

TEST(DatasetTest, PlanMixtureIsDeterministicAndShuffled) {
  auto a = PlanMixture({100, 50}, {0.5, 1.0}, 1).value();
  auto b = PlanMixture({100, 50}, {0.5, 1.0}, 1).value();
  auto c = PlanMixture({100, 50}, {0.5, 1.0}, 2).value();
  auto key = [](const std::vector<MixEntry>& p) {
    std::vector<std::pair<int, int64_t>> v;
    for (const auto& e : p) v.push_back({e.dataset, e.index});
    return v;
  };
  EXPECT_EQ(key(a), key(b));
  EXPECT_NE(key(a), key(c));
  // Interleaved, not dataset after dataset.
  int switches = 0;
  for (size_t k = 1; k < a.size(); ++k) switches += a[k].dataset != a[k - 1].dataset;
  EXPECT_GT(switches, 20);
  // Dataset 0's chosen half does not depend on the datasets after it.
  auto d = PlanMixture({100, 7, 3}, {0.5, 3.0, 1.0}, 1).value();
  std::set<int64_t> half_a, half_d;
  for (const auto& e : a)
    if (e.dataset == 0) half_a.insert(e.index);
  for (const auto& e : d)
    if (e.dataset == 0) half_d.insert(e.index);
  EXPECT_EQ(half_a, half_d);
}

TEST(DatasetTest, PlanMixtureErrors) {
  EXPECT_EQ(PlanMixture({1, 2}, {1.0}, 0).status().message(),
            "PlanMixture: 2 datasets but 1 ratios");
  EXPECT_FALSE(PlanMixture({1}, {-0.5}, 0).ok());
  EXPECT_FALSE(PlanMixture({1}, {std::nan("")}, 0).ok());
  EXPECT_FALSE(PlanMixture({1000000}, {1e12}, 0).ok());
  EXPECT_TRUE(PlanMixture({}, {}, 0).value().empty());
}

TEST(DatasetTest, MixDatasetsMovesAndCopiesSamples) {
  auto make = [](int32_t tag, int n) {
    std::vector<Sample> v(n);
    for (int i = 0; i < n; ++i) v[i].input_ids = {tag, i};
    return v;
  };
  auto mixed = MixDatasets({make(100, 3), make(200, 2)}, {2.0, 0.5}, 3);
  ASSERT_TRUE(mixed.ok());
  ASSERT_EQ(mixed->size(), 7u);
  std::multiset<std::vector<int32_t>> got;
  for (const auto& s : *mixed) got.insert(s.input_ids);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got.count({100, i}), 2u);
  EXPECT_EQ(got.count({200, 0}) + got.count({200, 1}), 1u);
}

TEST(DatasetTest, LoadMixtureReadsEveryDatasetWithItsRatio) {
  std::vector<LoadReport> reports;
  LoadOptions options;
  options.on_bad_sample = OnBadSample::kSkip;
  auto mixed = LoadMixture({{Corpus("chat.jsonl"), 2.0, DatasetKind::kChat},
                            {Corpus("text.jsonl"), 0.4, DatasetKind::kText},
                            {Corpus("malformed.jsonl"), 1.0, DatasetKind::kAuto}},
                           Tok(), Qwen3(), options, 11, &reports);
  ASSERT_TRUE(mixed.ok()) << mixed.status().message();
  EXPECT_EQ(mixed->size(), 12u + 2u + 3u);
  ASSERT_EQ(reports.size(), 3u);
  EXPECT_EQ(reports[2].skipped, 11);
  auto again = LoadMixture({{Corpus("chat.jsonl"), 2.0, DatasetKind::kChat},
                            {Corpus("text.jsonl"), 0.4, DatasetKind::kText},
                            {Corpus("malformed.jsonl"), 1.0, DatasetKind::kAuto}},
                           Tok(), Qwen3(), options, 11, nullptr);
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < mixed->size(); ++i) {
    EXPECT_EQ((*mixed)[i].input_ids, (*again)[i].input_ids);
  }
  auto bad = LoadMixture({{Corpus("text.jsonl"), -1.0}}, Tok(), Qwen3(), options, 0, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            Corpus("text.jsonl") + ": ratio must be a finite number >= 0, got -1.000000");
}

TEST(DatasetTest, ParseKindAndOnBadSample) {
  EXPECT_EQ(ParseDatasetKind("chat").value(), DatasetKind::kChat);
  EXPECT_EQ(ParseDatasetKind("pretrain").status().message(),
            "unknown dataset kind \"pretrain\" (expected auto, chat or text)");
  EXPECT_EQ(ParseOnBadSample("skip").value(), OnBadSample::kSkip);
  EXPECT_FALSE(ParseOnBadSample("ignore").ok());
}

}  // namespace
}  // namespace xt

namespace xt {
namespace {

// Lines are tokenized on every core in blocks; the result must be the serial one: the same
// samples in line order, the same report, the same first error.
TEST(DatasetTest, ParallelLoadingEqualsSerial) {
  const std::string dir = testing::TempDir("parallel");
  const std::string path = dir + "/big.jsonl";
  {
    std::ifstream good(Corpus("chat.jsonl")), bad(Corpus("malformed.jsonl"));
    std::vector<std::string> g, b;
    for (std::string l; std::getline(good, l);) g.push_back(l);
    for (std::string l; std::getline(bad, l);) b.push_back(l);
    std::ofstream out(path);
    for (int i = 0; i < 9000; ++i)  // > 2 blocks, a bad line now and then
      out << (i % 997 == 5 ? b[1 + i % (b.size() - 1)] : g[i % g.size()]) << "\n";
  }
  auto load = [&](int threads, OnBadSample policy, LoadReport* report) {
    omp_set_num_threads(threads);
    auto r = Load(path, policy, DatasetKind::kAuto, report);
    omp_set_num_threads(1);
    return r;
  };
  LoadReport r1, r2;
  auto s1 = load(1, OnBadSample::kSkip, &r1);
  auto s2 = load(2, OnBadSample::kSkip, &r2);
  ASSERT_TRUE(s1.ok() && s2.ok());
  ASSERT_EQ(s1->size(), s2->size());
  EXPECT_GT(r1.skipped, 5);
  for (size_t i = 0; i < s1->size(); ++i) {
    ASSERT_EQ((*s1)[i].input_ids, (*s2)[i].input_ids) << i;
    ASSERT_EQ((*s1)[i].labels, (*s2)[i].labels) << i;
  }
  EXPECT_EQ(r1.Summary(), r2.Summary());
  auto e1 = load(1, OnBadSample::kError, nullptr), e2 = load(2, OnBadSample::kError, nullptr);
  ASSERT_FALSE(e1.ok());
  EXPECT_EQ(e1.status().message(), e2.status().message());
}

}  // namespace
}  // namespace xt
